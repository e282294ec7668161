"""Shared fixtures. Tests run as root on a bootstrapped machine (make test does that)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent
CLOUDMIG = str(VENV_BIN / "cloudmig")


def cloudmig(*args: str, env: dict | None = None, check: bool = True, timeout: float = 300,
             input: str | None = None) -> subprocess.CompletedProcess:
    """Run the real `cloudmig` console script, as a user would."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    res = subprocess.run([CLOUDMIG, *args], capture_output=True, text=True, env=full_env,
                         timeout=timeout, input=input)
    if check and res.returncode != 0:
        raise AssertionError(f"cloudmig {' '.join(args)} exited {res.returncode}\n"
                             f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}")
    return res


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    d = tmp_path / "state"
    monkeypatch.setenv("CLOUDMIG_STATE_DIR", str(d))
    return d
