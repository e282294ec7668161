"""`cloudmig host create --provider aws|azure` on the simulated clouds: the VM boots its real
user-data, and the host joins by itself (pinned host key, first boot, agent over SSH) and ends
ready; a first boot that fails exits non-zero quoting the bootstrap step, keeps the host unless
--destroy-on-failure; destroy removes the adoption state."""

from __future__ import annotations

import json
import os
import stat

import pytest

from lab import cloudmig

OPERATOR = "198.18.0.0/15"


def _cm(sim, state_dir, *args, check=True, timeout=300):
    return cloudmig(*args, env={**sim.env, "CLOUDMIG_STATE_DIR": str(state_dir)}, check=check, timeout=timeout)


def _hosts(sim, state_dir):
    return {h["name"]: h for h in json.loads(_cm(sim, state_dir, "hosts", "--json").stdout)}


@pytest.mark.parametrize("cloud", ["aws", "azure"])
def test_host_create_boots_joins_and_ends_ready(cloud_sim, state_dir, cloud):
    name = f"j-{cloud}"
    out = _cm(cloud_sim, state_dir, "host", "create", "--provider", cloud, "--operator-cidr", OPERATOR, name).stdout
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
    # the channel works for real work: a container runs on the cloud host
    _cm(cloud_sim, state_dir, "run", name, "sleeper", "--", "sleep", "300")
    assert [c["host"] for c in json.loads(_cm(cloud_sim, state_dir, "ps", "--json").stdout)] == [name]

    out = _cm(cloud_sim, state_dir, "host", "destroy", name).stdout
    assert f"host {name} destroyed" in out
    assert not adoption.exists() and name not in _hosts(cloud_sim, state_dir)
    assert json.loads(_cm(cloud_sim, state_dir, "ps", "--json").stdout) == []


@pytest.mark.parametrize("cloud,image", [("aws", "ami-0deb12a0000000003"),
                                         ("azure", "Debian:debian-12:12-gen2:0.20230101.1400")])
def test_a_failed_first_boot_names_its_step_and_keeps_the_host(cloud_sim, state_dir, cloud, image):
    """A plain Debian image without CRIU and without apt sources: first boot cannot fetch CRIU
    and fails at the bootstrap's step sid-apt."""
    name = f"f-{cloud}"
    res = _cm(cloud_sim, state_dir, "host", "create", "--provider", cloud, "--operator-cidr", OPERATOR,
              "--option", f"image={image}", name, check=False)
    assert res.returncode != 0
    assert "first boot failed at bootstrap step sid-apt" in " ".join(res.stderr.split()), res.stdout + res.stderr
    assert "kept for inspection" in " ".join(res.stderr.split())
    assert _hosts(cloud_sim, state_dir)[name]["state"] == "error"
    assert (state_dir / "hosts" / name).exists()
    _cm(cloud_sim, state_dir, "host", "destroy", name)
    assert not (state_dir / "hosts" / name).exists()

    res = _cm(cloud_sim, state_dir, "host", "create", "--provider", cloud, "--operator-cidr", OPERATOR,
              "--option", f"image={image}", "--destroy-on-failure", name, check=False)
    assert res.returncode != 0 and "first boot failed at bootstrap step" in " ".join(res.stderr.split())
    assert "destroying it (--destroy-on-failure)" in res.stdout
    assert "was destroyed (--destroy-on-failure)" in " ".join(res.stderr.split())
    assert name not in _hosts(cloud_sim, state_dir) and not (state_dir / "hosts" / name).exists()
