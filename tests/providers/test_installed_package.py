"""cloudmig installed from its wheel into a fresh virtual environment outside the checkout,
used from there as a user who ran `pip install 'cloudmig[aws,azure]'` would: the console
script and `python -m cloudmig`, `cloudmig setup`, a lab with a migration, a host on the
moto EC2 server, and a machine adopted over SSH whose cloudmig comes from the controller's
own wheel (put back together from the installed files: there is no checkout to build from)
and its dependencies' wheels (the lab host has no route to the package index)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from cloudmig import __version__, distribution, errors
from cloudmig.agent import dial, server
from cloudmig.bench.sshd import Sshd
from cloudmig.inventory import HostRecord
from lab import Lab, connect, new_lab_id, resp

PIP_TIMEOUT_S = 600


def _run(argv: list[str], env: dict | None = None, cwd: Path | None = None, timeout: float = 600,
         check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd,
                         timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{argv} exited {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv outside the checkout with cloudmig[aws,azure] installed from the wheel."""
    root = tmp_path_factory.mktemp("installed")
    wheels = root / "wheels"
    wheel = distribution.own_wheel(wheels)
    venv = root / "venv"
    _run(["/usr/bin/python3", "-m", "venv", str(venv)])
    _run([str(venv / "bin" / "pip"), "install", "-q", f"{wheel}[aws,azure]"], timeout=PIP_TIMEOUT_S)
    return root, venv


def test_console_script_module_and_entry_points(installed):
    root, venv = installed
    out = _run([str(venv / "bin" / "cloudmig"), "--help"], cwd=root).stdout
    assert "migrate" in out and "setup" in out
    assert "migrate" in _run([str(venv / "bin" / "python"), "-m", "cloudmig", "--help"], cwd=root).stdout
    code = ("import cloudmig, json; from importlib.metadata import entry_points; "
            "print(json.dumps([cloudmig.__file__, sorted(e.name for e in entry_points(group='cloudmig.providers'))]))")
    where, names = json.loads(_run([str(venv / "bin" / "python"), "-c", code], cwd=root).stdout)
    assert where.startswith(str(venv)), where              # not the checkout
    assert names == ["aws", "azure", "lab", "ssh"]


def test_setup_lab_migration_cloud_host_and_ssh_install_from_the_installed_package(installed, tmp_path, aws_env):
    root, venv = installed
    cm = str(venv / "bin" / "cloudmig")
    setup = _run([cm, "setup"], cwd=root, timeout=1800).stdout
    assert "already" in setup and "this machine is ready" in setup          # bootstrapped by make test
    assert _run([str(venv / "bin" / "python"), "-c", "import pycriu"], cwd=root).returncode == 0

    lab = Lab(tmp_path / "state", new_lab_id())
    env = {**lab.env, **aws_env.env}
    sshd = None
    try:
        _run([cm, "lab", "up", "--hosts", "2"], env=env, cwd=root)
        _run([cm, "run", "h1", "db", "--publish", "16390:6379", "--", "redis-server", "--port", "6379",
              "--protected-mode", "no", "--save", ""], env=env, cwd=root)
        sock, f = connect(lab.public_address("h1"), 16390)
        with sock:
            assert resp(f, "SET", "k", "installed") == "OK"
        _run([cm, "migrate", "db", "--to", "h2"], env=env, cwd=root)
        sock, f = connect(lab.public_address("h1"), 16390)      # through the forward
        with sock:
            assert resp(f, "GET", "k") == "installed"

        created = _run([cm, "host", "create", "--provider", "aws", "--operator-cidr", "203.0.113.7/32", "--no-wait",
                        "web1"], env=env, cwd=root).stdout
        assert "host web1 (aws) running at" in created
        _run([cm, "host", "destroy", "web1"], env=env, cwd=root)

        # adopt h1's namespace as s1, into a fresh venv: the controller ships its own cloudmig
        address = lab.public_address("h1")
        sshd = Sshd(tmp_path / "sshd", netns=f"{lab.lab_id}-h1", address=address)
        sshd.start()
        remote_venv = tmp_path / "remote" / "venv"
        added = _run([cm, "host", "add", "s1", "--ssh", f"root@{address}", "--port", str(sshd.port),
                      "--identity", str(sshd.client_key), "--option", f"remote_venv={remote_venv}",
                      "--option", f"remote_dir={tmp_path / 'remote' / 'agent'}", "--option", "agent_start=nohup",
                      "--option", f"cgroup_parent=/cloudmig/{lab.lab_id}-s1",
                      "--option", f"netns_prefix={lab.lab_id}-c-s1"], env=env, cwd=root, timeout=1800).stdout
        assert "shipping cloudmig" in added and "host s1 (ssh) ready" in added, added
        code = "import cloudmig, sys; print(cloudmig.__version__, cloudmig.__file__)"
        version, where = _run([str(remote_venv / "bin" / "python"), "-c", code], cwd=root).stdout.split()
        assert version == __version__ and where.startswith(str(remote_venv))
        _run([cm, "host", "destroy", "s1"], env=env, cwd=root)
    finally:
        if "s1" in lab.inventory().get("hosts", {}):
            _run([cm, "host", "destroy", "s1"], env=env, cwd=root, check=False)
        if sshd:
            sshd.stop()
        _run([cm, "lab", "down"], env=env, cwd=root, check=False)
    assert not lab.leftovers(), lab.leftovers()


def test_an_agent_of_another_version_is_refused_when_the_channel_opens(tmp_path):
    """A stand-in agent that answers ping with an older version (the real server, one op)."""
    token = "t" * 32
    (tmp_path / "token").write_text(token)
    os.chmod(tmp_path / "token", 0o600)
    sock_path = str(tmp_path / "agent.sock")
    srv = server.AgentServer(token=token, handlers={"ping": lambda: {"version": "0.0.1"}})
    ready = threading.Event()
    threading.Thread(target=srv.serve_unix, args=(sock_path, ready), daemon=True).start()
    ready.wait(5)
    try:
        record = HostRecord(name="old1", provider="ssh", transport="unix",
                            agent={"socket": sock_path, "token_file": str(tmp_path / "token")})
        with pytest.raises(errors.AgentError, match="runs cloudmig 0.0.1") as exc:
            dial.connect(record)
        assert __version__ in str(exc.value) and "lab up" in str(exc.value)
    finally:
        srv.shutdown()
