"""`cloudmig host create --provider aws|azure` on the simulated clouds: the VM boots its real
user-data, and the host joins by itself (pinned host key, first boot, agent over SSH) and ends
ready; a first boot that fails exits non-zero quoting the bootstrap step, keeps the host unless
--destroy-on-failure; destroy removes the adoption state."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from cloudmig.agent import dial
from cloudmig.inventory import Inventory
from lab import cloudmig

OPERATOR = "198.18.0.0/15"
# where first boot writes on a VM: in a simulated VM, its own overlays, never this machine's
FIRST_BOOT_PATHS = ("/var/lib/cloudmig-agent", "/var/lib/cloudmig/bootstrap.status",
                    "/usr/local/sbin/cloudmig-firstboot", "/opt/cloudmig", "/root/.ssh/authorized_keys")


def _other_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    return ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def _cm(sim, state_dir, *args, check=True, timeout=300):
    return cloudmig(*args, env={**sim.env, "CLOUDMIG_STATE_DIR": str(state_dir)}, check=check, timeout=timeout)


def _hosts(sim, state_dir):
    return {h["name"]: h for h in json.loads(_cm(sim, state_dir, "hosts", "--json").stdout)}


@pytest.mark.parametrize("cloud", ["aws", "azure"])
def test_host_create_boots_joins_and_ends_ready(cloud_sim, state_dir, cloud):
    name = f"j-{cloud}"
    before = {p: os.path.exists(p) for p in FIRST_BOOT_PATHS}
    if cloud == "aws":      # in two steps: the VM first, the join later
        out = _cm(cloud_sim, state_dir, "host", "create", "--provider", cloud, "--no-wait", "--operator-cidr",
                  OPERATOR, name).stdout
        assert f"host {name} ({cloud}) running at" in out and _hosts(cloud_sim, state_dir)[name]["state"] == "running"
        out = _cm(cloud_sim, state_dir, "host", "join", name, "--timeout", "120").stdout
    else:
        out = _cm(cloud_sim, state_dir, "host", "create", "--provider", cloud, "--timeout", "120", "--operator-cidr",
                  OPERATOR, name).stdout
    assert "sshd answers with the pinned host key" in out, out
    assert "bootstrap: done     host ready" in out and "first boot ok" in out, out   # live first-boot log
    assert "already installed" in out and "agent started by first boot" in out, out
    assert f"host {name} ({cloud}) ready at 198.18." in out, out
    host = _hosts(cloud_sim, state_dir)[name]
    assert host["state"] == "ready"

    adoption = state_dir / "hosts" / name
    secrets = [adoption / f for f in ("agent.token", "ssh_key", "known_hosts")]
    for f in secrets:
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
    assert (adoption / "known_hosts").read_text().startswith(host["public_address"] + " ssh-ed25519 ")
    assert {p: os.path.exists(p) for p in FIRST_BOOT_PATHS} == before
    # the channel works for real work: a container runs on the cloud host
    _cm(cloud_sim, state_dir, "run", name, "sleeper", "--", "sleep", "300")
    assert [c["host"] for c in json.loads(_cm(cloud_sim, state_dir, "ps", "--json").stdout)] == [name]

    # no trust on first use, nor later: another key pinned for that address is refused
    pinned = (adoption / "known_hosts").read_text()
    (adoption / "known_hosts").write_text(f"{host['public_address']} {_other_key()}\n")
    res = subprocess.run(dial.ssh_argv(Inventory().read().hosts[name], ["true"]), capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 255 and "verification failed" in res.stderr.lower(), res.stderr
    (adoption / "known_hosts").write_text(pinned)

    out = _cm(cloud_sim, state_dir, "host", "destroy", name).stdout
    assert f"host {name} destroyed" in out
    assert not adoption.exists() and name not in _hosts(cloud_sim, state_dir)
    assert json.loads(_cm(cloud_sim, state_dir, "ps", "--json").stdout) == []


def test_a_vm_that_never_boots_times_out_and_is_destroyed_on_request(cloud_sim, state_dir):
    """An image that hangs before sshd: --timeout bounds the wait, with a sentence."""
    res = _cm(cloud_sim, state_dir, "host", "create", "--provider", "aws", "--operator-cidr", OPERATOR,
              "--option", "image=ami-0deb12a0000000004", "--timeout", "5", "--destroy-on-failure", "t-aws",
              check=False)
    err = " ".join(res.stderr.split())
    assert res.returncode == 4 and "t-aws: sshd did not answer at 198.18." in err and "in time" in err, err
    assert "was destroyed (--destroy-on-failure)" in err
    assert "t-aws" not in _hosts(cloud_sim, state_dir)
    assert not cloud_sim.ec2.ec2().describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["cloudmig-t-aws"]}])["SecurityGroups"]


@pytest.mark.parametrize("cloud,image,destroy", [("aws", "ami-0deb12a0000000003", False),
                                                 ("azure", "Debian:debian-12:12-gen2:0.20230101.1400", True)])
def test_a_failed_first_boot_names_its_step(cloud_sim, state_dir, cloud, image, destroy):
    """A plain Debian image without CRIU and without apt sources: first boot cannot fetch CRIU
    and fails at the bootstrap's step sid-apt. The host is kept for inspection, or destroyed
    with --destroy-on-failure."""
    name = f"f-{cloud}"
    res = _cm(cloud_sim, state_dir, "host", "create", "--provider", cloud, "--operator-cidr", OPERATOR,
              "--option", f"image={image}", *(["--destroy-on-failure"] if destroy else []), name, check=False)
    err = " ".join(res.stderr.split())
    assert res.returncode == 4
    assert f"{name}: first boot failed at bootstrap step sid-apt" in err, res.stdout + res.stderr
    assert "cannot find a Debian mirror URI" in err         # the step's own words, read from the host
    if destroy:
        assert "destroying it (--destroy-on-failure)" in res.stdout
        assert "was destroyed (--destroy-on-failure)" in err
        assert name not in _hosts(cloud_sim, state_dir) and not (state_dir / "hosts" / name).exists()
        return
    assert "kept for inspection" in err
    assert _hosts(cloud_sim, state_dir)[name]["state"] == "error"
    assert (state_dir / "hosts" / name).exists()
    _cm(cloud_sim, state_dir, "host", "destroy", name)
    assert not (state_dir / "hosts" / name).exists() and name not in _hosts(cloud_sim, state_dir)
