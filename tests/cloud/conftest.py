"""Fixtures of the cloud tests: both simulated clouds, whose instances boot as lab hosts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))     # the cloud simulator (cloudsim/)

from cloudsim.simulator import CloudSimulator  # noqa: E402
from lab import VENV_BIN, new_lab_id  # noqa: E402


@pytest.fixture
def cloud_sim(tmp_path, monkeypatch, state_dir):
    """The simulated EC2 and ARM with their hypervisor; the CLI's and SDKs' env aimed at them.
    Every VM, namespace and server is gone afterwards, even when the test failed."""
    for key in ("AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    sim = CloudSimulator.start(tmp_path / "sim", new_lab_id(), VENV_BIN.parent)
    try:
        for key, value in sim.env.items():
            monkeypatch.setenv(key, value)
        yield sim
    finally:
        sim.stop()
    assert not sim.leftovers(), sim.leftovers()
    assert not sim.hypervisor.failures, sim.hypervisor.failures
