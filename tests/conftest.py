"""Tests run as root on a bootstrapped machine (`make test` bootstraps it first).

Shared helpers live in tests/lab.py (imported as `lab`), not here: several conftest modules
exist under tests/, and only one of them can be imported as `conftest`.
"""

import pytest


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    """A state directory of the test's own (CLOUDMIG_STATE_DIR)."""
    d = tmp_path / "state"
    monkeypatch.setenv("CLOUDMIG_STATE_DIR", str(d))
    return d
