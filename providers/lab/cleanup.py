"""Removing lab hosts completely: processes, containers, mounts, namespaces, links, cgroups.

    cleanup.remove_host(topo, "h2", host_dir)   # one host, whatever state it is in
    cleanup.sweep(topo)                         # anything left with the lab's prefix

Works from what is on the machine, not only from cloudmig's records, so a crashed run
is cleaned up too.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from pathlib import Path

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from cloudmig import paths
from cloudmig.providers import Progress, _no_progress
from cloudmig.providers.lab.topology import NETNS_DIR, Topology
from cloudmig.runtime import mounts, procs, runc

log = logging.getLogger(__name__)

KILL_GRACE_S = 2
CGROUP_ROOT = Path("/sys/fs/cgroup")
WIREGUARD_RUN_DIR = Path("/var/run/wireguard")


def pids_in_netns(ns_name: str) -> list[int]:
    try:
        target = os.stat(NETNS_DIR / ns_name).st_ino
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == target:
                found.append(int(entry))
        except OSError:
            continue
    return found


def kill_pids(pids: list[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return
        deadline = time.monotonic() + KILL_GRACE_S
        while time.monotonic() < deadline and any(procs.process_alive(p) for p in alive):
            time.sleep(0.05)
        pids = [p for p in alive if procs.process_alive(p)]


def remove_netns(ns_name: str) -> None:
    kill_pids(pids_in_netns(ns_name))
    if (NETNS_DIR / ns_name).exists():
        try:
            netns.remove(ns_name)
        except OSError:
            mounts.unmount(NETNS_DIR / ns_name)
            (NETNS_DIR / ns_name).unlink(missing_ok=True)


def remove_cgroups(name: str) -> None:
    """rmdir /sys/fs/cgroup/*/cloudmig/NAME (deepest first), and cloudmig/ itself if empty."""
    if not CGROUP_ROOT.exists():
        return
    for hierarchy in CGROUP_ROOT.iterdir():
        base = hierarchy / "cloudmig"
        top = base / name
        if top.is_dir():
            for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: len(t[0]), reverse=True):
                try:
                    os.rmdir(dirpath)
                except OSError as exc:
                    log.warning("cgroup %s not removed: %s", dirpath, exc.strerror)
        try:
            base.rmdir()
        except OSError:
            pass


def remove_host(topo: Topology, host: str, host_dir: Path) -> None:
    # 1. the agent, and every process in the host's and its containers' namespaces
    pid_file = host_dir / "agent.pid"
    if pid_file.exists():
        try:
            kill_pids([int(pid_file.read_text())])
        except ValueError:
            pass
    runtime = runc.Runtime(host_dir, f"/cloudmig/{topo.lab}-{host}")
    for name in runtime.list():
        runtime.stop(name)
    container_prefix = f"{topo.lab}-c-{host}-"
    for ns in [n for n in topo.leftover_netns() if n.startswith(container_prefix)]:
        remove_netns(ns)
    kill_pids(pids_in_netns(topo.host_netns(host)))
    # 2. mounts and files of the host
    mounts.unmount_under(host_dir)
    shutil.rmtree(host_dir, ignore_errors=True)
    # 3. wiring and cgroups
    topo.remove_host(host)
    remove_cgroups(f"{topo.lab}-{host}")


def sweep(topo: Topology, progress: Progress = _no_progress) -> None:
    """Remove anything of this lab that is still on the machine."""
    for ns in topo.leftover_netns():
        progress(f"removing leftover namespace {ns}")
        remove_netns(ns)
    with IPRoute() as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if name.startswith(f"{topo.lab}-") and name != topo.bridge:
                try:
                    ipr.link("del", index=link["index"])
                except NetlinkError:
                    pass
    hosts_dir = paths.state_dir() / "hosts"
    if hosts_dir.exists():
        mounts.unmount_under(hosts_dir)
        shutil.rmtree(hosts_dir, ignore_errors=True)
    if CGROUP_ROOT.exists():
        for hierarchy in CGROUP_ROOT.iterdir():
            base = hierarchy / "cloudmig"
            if base.is_dir():
                for child in base.iterdir():
                    if child.is_dir() and child.name.startswith(f"{topo.lab}-"):
                        remove_cgroups(child.name)
    if WIREGUARD_RUN_DIR.exists():
        for sock in WIREGUARD_RUN_DIR.glob(f"{topo.lab}*.sock"):
            sock.unlink(missing_ok=True)
