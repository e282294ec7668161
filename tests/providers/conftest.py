"""Fixtures of the provider tests: moto's EC2 server and the local Azure ARM server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))     # the cloud simulator (cloudsim/)

from cloudsim.arm_server import ARM_SUBSCRIPTION, ARM_TOKEN, ArmServer
from cloudsim.moto_server import MotoServer


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


@pytest.fixture
def arm_server(tmp_path):
    server = ArmServer.start(tmp_path, token=ARM_TOKEN, subscription=ARM_SUBSCRIPTION)
    yield server
    server.stop()


@pytest.fixture
def azure_env(arm_server, monkeypatch, state_dir):
    """The azure-mgmt clients aimed at the local ARM server, trusting its test CA."""
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", ARM_SUBSCRIPTION)
    monkeypatch.setenv("CLOUDMIG_AZURE_ARM_ENDPOINT", arm_server.url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(arm_server.ca_path))
    return arm_server
