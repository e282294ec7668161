"""Test helpers for lab hosts: a lab of our own per test, and checks of the machine itself."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloudmig.providers.lab.cleanup import pids_in_netns


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


NETNS_DIR = Path("/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def new_lab_id() -> str:
    return "t" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(3))


class Lab:
    def __init__(self, state_dir: Path, lab_id: str) -> None:
        self.state_dir = state_dir
        self.lab_id = lab_id
        self.env = {"CLOUDMIG_STATE_DIR": str(state_dir), "CLOUDMIG_LAB_ID": lab_id}

    def cm(self, *args: str, check: bool = True, timeout: float = 300):
        return cloudmig(*args, env=self.env, check=check, timeout=timeout)

    def inventory(self) -> dict:
        path = self.state_dir / "inventory.json"
        return json.loads(path.read_text()) if path.exists() else {"hosts": {}, "containers": {}}

    def public_address(self, host: str) -> str:
        return self.inventory()["hosts"][host]["public_address"]

    def ps(self) -> list[dict]:
        return json.loads(self.cm("ps", "--json").stdout)

    # ---- what is on the machine (not what cloudmig thinks)
    def netns(self) -> list[str]:
        return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(self.lab_id + "-")) \
            if NETNS_DIR.exists() else []

    def links(self) -> list[str]:
        return sorted(n for n in os.listdir("/sys/class/net") if n.startswith(self.lab_id))

    def mounts(self) -> list[str]:
        with open("/proc/self/mountinfo") as fh:
            return [line.split()[4] for line in fh if line.split()[4].startswith(str(self.state_dir))]

    def cgroups(self) -> list[str]:
        found = []
        if CGROUP_ROOT.exists():
            for hierarchy in CGROUP_ROOT.iterdir():
                base = hierarchy / "cloudmig"
                if base.is_dir():
                    found += [str(p) for p in base.iterdir() if p.name.startswith(self.lab_id + "-")]
        return found

    def processes(self, needle: str | None = None) -> list[str]:
        """Command lines of processes mentioning ``needle`` (default: our state dir, i.e. agents)."""
        needle = needle or str(self.state_dir)
        out = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if needle in cmd:
                out.append(f"{pid}: {cmd}")
        return out

    def criu_processes(self) -> list[str]:
        """runc and CRIU processes of this lab's hosts (other labs may run theirs meanwhile)."""
        return [p for p in self.processes(str(self.state_dir / "hosts")) if "criu" in p]

    def processes_in_netns(self, netns: str) -> list[str]:
        """Command lines of the processes living in network namespace ``netns``."""
        out = []
        for pid in self.pids_in_netns(netns):
            try:
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:      # it ended meanwhile
                continue
        return out

    @staticmethod
    def pids_in_netns(netns: str) -> list[int]:
        return pids_in_netns(netns)     # /proc's view, as the lab's own clean-up reads it

    def leftovers(self, needle: str | None = None) -> dict:
        left = {"netns": self.netns(), "links": self.links(), "mounts": self.mounts(),
                "cgroups": self.cgroups(), "agents": self.processes(),
                "processes": self.processes(needle) if needle else []}
        return {k: v for k, v in left.items() if v}


def resp(sock_file, *words: str):
    """Send one Redis command (RESP) and read one reply."""
    cmd = f"*{len(words)}\r\n" + "".join(f"${len(w.encode())}\r\n{w}\r\n" for w in words)
    sock_file.write(cmd.encode())
    sock_file.flush()
    return read_reply(sock_file)


def read_reply(f):
    line = f.readline()
    if not line:
        raise ConnectionError("server closed the connection")
    kind, rest = line[:1], line[1:-2].decode()
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RuntimeError(rest)
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode()
    if kind == b"*":
        return [read_reply(f) for _ in range(int(rest))]
    raise RuntimeError(f"bad reply {line!r}")


def connect(address: str, port: int, timeout_s: float = 10, attempts: int = 200):
    """A connection once the server listens (a busy 2-core machine may take seconds to start
    one: up to ``attempts`` tries 0.1 s apart)."""
    last = None
    for _ in range(attempts):
        try:
            s = socket.create_connection((address, port), timeout=timeout_s)
            return s, s.makefile("rwb")
        except OSError as exc:
            last = exc
            time.sleep(0.1)
    raise AssertionError(f"cannot connect to {address}:{port}: {last}")


@contextlib.contextmanager
def running_lab(base: Path, hosts: int, *options: str):
    """A lab of ``hosts`` hosts of this test's own (``options``: more of `lab up`'s), removed
    afterwards even on failure."""
    lab = Lab(base / "state", new_lab_id())
    try:
        lab.cm("lab", "up", "--hosts", str(hosts), *options)
        yield lab
    finally:
        lab.cm("lab", "down", check=False)


def lab_fixture(hosts: int):
    """A pytest fixture named like the variable it is assigned to: ``lab = lab_fixture(3)``."""
    @pytest.fixture
    def lab(tmp_path):
        with running_lab(tmp_path, hosts) as running:
            yield running
    return lab
