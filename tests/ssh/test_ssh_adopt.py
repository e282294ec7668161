"""Adopting a machine over SSH: a lab host running a real sshd becomes host s1.

The lab host shares this machine's file system, so cloudmig is found installed at the test's
venv; everything else is real: ssh with a pinned host key, the token on both sides, the agent
daemon started over SSH inside the lab host's namespace, every call relayed through
`cloudmig agent connect`, and a published port answering on the address SSH reached.
"""

from __future__ import annotations

import json
import os
import stat
import time
import urllib.request
from pathlib import Path

import pytest

from lab import VENV_BIN, Lab, new_lab_id
from cloudmig.bench.sshd import Sshd, keygen

HTTP_TIMEOUT_S = 15


def _get(url: str) -> str:
    deadline, last = time.monotonic() + HTTP_TIMEOUT_S, None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.read().decode()
        except OSError as exc:
            last = exc
            time.sleep(0.2)
    raise AssertionError(f"GET {url} failed: {last}")


def _netns_inode_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


@pytest.fixture
def adopted(tmp_path):
    """A one-host lab, sshd in h1's namespace, and the options that adopt it as s1."""
    lab = Lab(tmp_path / "state", new_lab_id())
    remote = tmp_path / "remote-s1"
    sshd = None
    try:
        lab.cm("lab", "up", "--hosts", "1")
        address = lab.public_address("h1")
        sshd = Sshd(tmp_path / "sshd", netns=f"{lab.lab_id}-h1", address=address)
        sshd.start()
        args = ["--ssh", f"root@{address}", "--port", str(sshd.port), "--identity", str(sshd.client_key),
                "--option", f"remote_venv={VENV_BIN.parent}", "--option", f"remote_dir={remote}",
                "--option", "agent_start=nohup", "--option", f"cgroup_parent=/cloudmig/{lab.lab_id}-s1",
                "--option", f"netns_prefix={lab.lab_id}-c-s1"]
        yield lab, sshd, address, remote, args
    finally:
        if "s1" in lab.inventory().get("hosts", {}):
            lab.cm("host", "destroy", "s1", check=False)
        if sshd:
            sshd.stop()
        lab.cm("lab", "down", check=False)
        for line in lab.processes(str(remote)):     # an agent a failed destroy left behind
            os.kill(int(line.split(":")[0]), 9)
    assert not lab.processes(str(remote)), "an agent of s1 survived"
    assert not sshd or not sshd.processes(), "an sshd of the test survived"
    assert not lab.leftovers(), lab.leftovers()


def test_adopt_run_and_destroy(adopted):
    lab, sshd, address, remote, args = adopted
    out = lab.cm("host", "add", "s1", *args).stdout
    assert "already installed" in out and "agent started (nohup" in out
    assert "agent answered over the SSH relay" in out and "host s1 (ssh) ready" in out

    [s1] = [h for h in json.loads(lab.cm("hosts", "--json").stdout) if h["name"] == "s1"]
    assert s1 == {"name": "s1", "provider": "ssh", "public_address": address, "state": "ready"}

    # host key pinned on first contact, in the state dir's file for s1
    known = (lab.state_dir / "hosts" / "s1" / "known_hosts").read_text()
    assert sshd.host_public_key() in known
    # the token: 0600 on both sides, the same secret
    local, far = lab.state_dir / "hosts" / "s1" / "agent.token", remote / "agent.token"
    assert stat.S_IMODE(local.stat().st_mode) == 0o600 and stat.S_IMODE(far.stat().st_mode) == 0o600
    assert local.read_text().strip() == far.read_text().strip()
    assert local.read_text().strip() not in out
    # one daemon, in h1's namespace (where sshd runs), on a root-only socket
    pid = int((remote / "agent.pid").read_text())
    assert _netns_inode_of(pid) == os.stat(f"/run/netns/{lab.lab_id}-h1").st_ino
    assert stat.S_IMODE((remote / "agent.sock").stat().st_mode) == 0o600

    lab.cm("run", "s1", "web", "--publish", "18080:8080", "--", "python3", "-m", "http.server", "8080")
    assert "Directory listing" in _get(f"http://{address}:18080/")
    [web] = lab.ps()
    assert web["host"] == "s1" and web["state"] == "running"
    assert web["endpoints"] == [f"{address}:18080/tcp"]
    # every call went through a fresh SSH session to the same daemon
    assert int((remote / "agent.pid").read_text()) == pid and Path(f"/proc/{pid}").exists()

    out = lab.cm("host", "destroy", "s1").stdout
    assert "container web removed" in out and "host s1 destroyed" in out
    assert not lab.processes(str(remote))
    assert not remote.exists()
    assert "s1" not in lab.inventory()["hosts"] and not lab.inventory()["containers"]
    assert not (lab.state_dir / "hosts" / "s1").exists()
    assert not [n for n in lab.netns() if n.startswith(f"{lab.lab_id}-c-s1")]


def test_refused_key_and_unreachable_port_are_clear_and_leave_nothing(adopted, tmp_path):
    lab, sshd, address, remote, args = adopted
    stranger = keygen(tmp_path / "stranger", "stranger")
    bad_key = [a if a != str(sshd.client_key) else str(stranger) for a in args]
    res = lab.cm("host", "add", "s1", *bad_key, check=False)
    assert res.returncode == 4, res.stderr
    assert "refused our SSH key" in res.stderr and "--identity" in res.stderr

    no_sshd = [a if a != str(sshd.port) else "2223" for a in args]
    res = lab.cm("host", "add", "s1", *no_sshd, check=False)
    assert res.returncode == 4 and "Cannot reach" in res.stderr and "port 2223" in res.stderr
    assert "s1" not in lab.inventory()["hosts"] and not (lab.state_dir / "hosts" / "s1").exists()
    assert not remote.exists()


def test_a_changed_host_key_is_refused(adopted, tmp_path):
    lab, sshd, address, remote, args = adopted
    lab.cm("host", "add", "s1", *args)
    pinned = lab.state_dir / "hosts" / "s1" / "known_hosts"
    good = pinned.read_text()
    other = Path(f"{keygen(tmp_path / 'impostor', 'impostor')}.pub").read_text().split()[1]
    pinned.write_text(good.replace(sshd.host_public_key(), other))

    res = lab.cm("host", "destroy", "s1", check=False)
    assert res.returncode == 4 and "not the one pinned" in res.stderr, res.stderr
    assert "s1" in lab.inventory()["hosts"] and (remote / "agent.sock").exists()   # nothing done

    pinned.write_text(good)
    lab.cm("host", "destroy", "s1")
    assert not remote.exists()


def test_install_ships_this_cloudmig_as_wheels_and_a_failed_bootstrap_names_its_step(adopted, tmp_path):
    """No cloudmig at the remote venv: the controller's own wheel and its dependencies' are
    shipped and bootstrapped for real. The venv's place is taken by a file, so the bootstrap
    fails at its venv step, and says so."""
    lab, sshd, address, remote, args = adopted
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "venv").write_text("not a directory\n")
    args = [a if not a.startswith("remote_venv=") else f"remote_venv={tmp_path / 'fresh' / 'venv'}" for a in args]
    res = lab.cm("host", "add", "s1", *args, check=False, timeout=600)
    assert "shipping cloudmig" in res.stdout and "bootstrap: packages" in res.stdout, res.stdout
    assert res.returncode == 4 and "failed at step venv" in res.stderr, res.stdout + res.stderr
    [shipped] = (tmp_path / "fresh" / "dist").iterdir()
    wheels = {w.name.split("-")[0] for w in shipped.glob("*.whl")}
    assert (shipped / "bootstrap-host").is_file() and {"cloudmig", "typer", "pydantic"} <= wheels, wheels
    assert "s1" not in lab.inventory()["hosts"] and not remote.exists()
