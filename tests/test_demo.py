"""`make demo` end to end: examples/demo.sh with its own lab, smaller data."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from lab import VENV_BIN, new_lab_id

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_start_to_finish(tmp_path):
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}", DEMO_KEYS="20000",
               CLOUDMIG_STATE_DIR=str(tmp_path / "state"), CLOUDMIG_LAB_ID=new_lab_id())
    res = subprocess.run(["bash", str(ROOT / "examples" / "demo.sh")], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "ok             True" in out
    assert "on one connection" in out and "errors 0" in out
    assert "(forwarded)" in out and "lab removed" in out
