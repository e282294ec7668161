"""Preflight refusals that need no lab: the `host` image stays on the machine it is."""

import pytest

from cloudmig import errors
from cloudmig.agent.ops import root_id
from cloudmig.migration import preflight


def test_host_image_moves_only_between_hosts_on_the_same_root():
    here = root_id()
    preflight.check_host_image("host", "db", "h1", here, "h2", here)          # lab hosts: allowed
    preflight.check_host_image("sha-image", "db", "h1", here, "s1", "other:1:2")   # layers travel
    with pytest.raises(errors.PreflightError, match="own root file system") as exc:
        preflight.check_host_image("host", "db", "h1", here, "s1", "other:1:2")
    assert "--image" in str(exc.value)


def test_root_id_names_this_machine_and_its_root():
    machine, dev, ino = root_id().rsplit(":", 2)
    assert dev.isdigit() and ino.isdigit() and root_id() == root_id()
