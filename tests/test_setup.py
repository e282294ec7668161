"""`cloudmig setup` refuses what it cannot do before it changes anything."""

import subprocess

import pytest

from cloudmig import distribution, errors
from lab import CLOUDMIG


def test_setup_as_a_user_is_refused_with_the_fix():
    # as user nobody; with the one capability that lets it read the checkout wherever it is
    # (a clone under root's own 0700 home is closed to other users), so nothing but the user
    # id decides
    res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", CLOUDMIG, "setup"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "must run as root" in res.stderr and "sudo cloudmig setup" in res.stderr
    assert "bootstrap:" not in res.stdout          # nothing ran


@pytest.mark.parametrize("release, named", [
    ('ID=ubuntu\nVERSION_ID="24.04"\n', "ubuntu 24.04"),
    ('ID=debian\nVERSION_ID="11"\n', "debian 11"),
])
def test_an_unsupported_distribution_is_named(tmp_path, release, named):
    (tmp_path / "os-release").write_text(release)
    with pytest.raises(errors.HostSetupError, match=named) as exc:
        distribution.check_platform(tmp_path / "os-release")
    assert "debian 12/13" in str(exc.value)


def test_debian_12_and_13_pass(tmp_path):
    for version in ("12", "13"):
        (tmp_path / "os-release").write_text(f'ID=debian\nVERSION_ID="{version}"\n')
        distribution.check_platform(tmp_path / "os-release")
