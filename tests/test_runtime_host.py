"""What the runtime reads from the host's mount table to tell CRIU: the cgroup yard it may
reuse (instead of mounting its own inside the freeze) and the cgroup2 hierarchy's options."""

from __future__ import annotations

import os
import socket

from cloudmig.runtime import sockets
from cloudmig.runtime.mounts import cgroup2_mount, cgroup_yard

HYBRID = """\
30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec - tmpfs tmpfs rw,mode=755
32 30 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 30 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
38 30 0:35 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 30 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 30 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw,favordynmods
"""
COMOUNTED = """\
30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
33 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:12 - cgroup cgroup rw,cpu,cpuacct
35 30 0:32 / /sys/fs/cgroup/net_cls,net_prio rw shared:14 - cgroup cgroup rw,net_cls,net_prio
41 30 0:38 / /sys/fs/cgroup/unified rw shared:9 - cgroup2 cgroup2 rw,nsdelegate
"""
PURE_V2 = """\
25 1 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
"""
SYMLINKED_NAMES = """\
33 30 0:30 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct
"""


def test_the_yard_is_the_hosts_own_mounts_only_when_laid_out_as_criu_names_them(tmp_path):
    def yard(text):
        f = tmp_path / "mountinfo"
        f.write_text(text)
        return cgroup_yard(str(f))
    assert yard(HYBRID) == "/sys/fs/cgroup"
    assert yard(COMOUNTED) == "/sys/fs/cgroup"
    assert yard(PURE_V2) is None           # CRIU would look for /sys/fs/cgroup/unified
    assert yard(SYMLINKED_NAMES) is None   # CRIU would look for cpu,cpuacct
    assert yard("") is None


def test_the_cgroup2_hierarchy_and_its_favordynmods(tmp_path):
    f = tmp_path / "mountinfo"
    f.write_text(HYBRID)
    assert cgroup2_mount(str(f)) == ("/sys/fs/cgroup/unified", True)
    f.write_text(PURE_V2)
    assert cgroup2_mount(str(f)) == ("/sys/fs/cgroup", False)
    f.write_text(COMOUNTED.splitlines()[0] + "\n")
    assert cgroup2_mount(str(f)) is None


def test_the_config_gate_holds_a_reader_until_released(tmp_path):
    """A reader of the config (CRIU, here `cat`) waits at the gate and then gets the options;
    the file is a plain file again after a release or a give-up."""
    import os
    import stat
    import subprocess

    from cloudmig.runtime.gate import ConfigGate

    conf = tmp_path / "criu.conf"
    conf.write_text("network-lock skip\n")
    gate = ConfigGate(conf)
    gate.arm()
    assert stat.S_ISFIFO(os.lstat(conf).st_mode)
    reader = subprocess.Popen(["cat", str(conf)], stdout=subprocess.PIPE, text=True)
    gate.wait_reader(reader, "test", tmp_path / "log")
    assert reader.poll() is None                       # held at the gate
    gate.release()
    assert reader.communicate(timeout=10)[0] == "network-lock skip\n"
    assert stat.S_ISREG(os.lstat(conf).st_mode) and conf.read_text() == "network-lock skip\n"

    gate.arm()
    reader = subprocess.Popen(["cat", str(conf)], stdout=subprocess.PIPE, text=True)
    gate.wait_reader(reader, "test", tmp_path / "log")
    reader.kill()
    reader.wait()
    gate.settle()
    assert stat.S_ISREG(os.lstat(conf).st_mode) and conf.read_text() == "network-lock skip\n"
    assert not list(tmp_path.glob("criu.conf.*"))


def test_a_unix_socket_counts_as_listening_only_after_listen(tmp_path):
    """The lazy-pages daemon's socket file exists from bind(); a restore may connect only
    after listen() (runtime/lazy_pages.py waits for that)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "daemon.socket"))
        assert not sockets.unix_listening(os.getpid())
        s.listen()
        assert sockets.unix_listening(os.getpid())
