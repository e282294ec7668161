"""Fixtures of the provider tests: moto's EC2 server and the local Azure ARM server."""

from __future__ import annotations

import pytest

from moto_server import MotoServer


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    server = MotoServer.start(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture
def aws_env(moto_server, monkeypatch, state_dir):
    """boto3's standard chain aimed at the moto server; cloudmig's state in a temp dir."""
    for key in ("AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in moto_server.env.items():
        monkeypatch.setenv(key, value)
    return moto_server
