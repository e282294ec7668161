"""A container moving back to the host that forwards it: while that host prepares the
container's new namespace, its route for the service IP keeps pointing into the tunnel.

For a moment pointed at the new namespace (no socket in it yet), every connection that
arrived then was answered with a reset: a client of a plan that moved containers back lost
its connection now and then. The agent's own call runs in host A's namespace (as the agent
does: ``nsenter --net``, its mounts are the machine's); ``ip monitor`` in A records every
route change meanwhile.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

from cloudmig.network import routing

SERVICE_IP = "100.96.0.7"
MARKS = ("100.96.0.250", "100.96.0.251")     # routes seen before and after: the monitor saw all between

PREPARE = """
    import sys
    from pathlib import Path
    from cloudmig.agent.netops import NetOps
    prefix, host_dir, service_ip = sys.argv[1:4]
    NetOps("a", prefix, Path(host_dir)).create_container_netns("web", service_ip, keep_route=True)
"""


def _ip(netns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True, text=True).stdout


def _mark(netns: str, monitor: subprocess.Popen, mark: str, seen: list[str]) -> None:
    """Add and delete the route ``mark``, again and again (``ip monitor`` may not listen yet
    when it starts), and read the monitor's lines into ``seen`` until one shows it; a monitor
    silent for 10 s is killed, which ends its output."""
    stop = threading.Event()

    def poke() -> None:
        for step in range(100):
            _ip(netns, "route", "add" if step % 2 == 0 else "del", f"{mark}/32", "dev", "fwd0")
            if stop.wait(0.1):
                return
        monitor.kill()

    poker = threading.Thread(target=poke)
    poker.start()
    try:
        for line in iter(monitor.stdout.readline, ""):
            seen.append(line)
            if mark in line:
                return
    finally:
        stop.set()
        poker.join()
    raise AssertionError(f"ip monitor never showed {mark}: {seen}")


def test_preparing_the_namespace_leaves_the_forwarders_route_alone(lab, tmp_path):
    a = lab.hosts["a"]
    prefix = f"{lab.prefix}c"
    lab.containers.append((a.netns, f"{prefix}-web"))
    _ip(a.netns, "link", "add", "fwd0", "type", "bridge")         # stands for the tunnel (no dummy module here)
    _ip(a.netns, "link", "set", "fwd0", "up")
    _ip(a.netns, "route", "add", f"{SERVICE_IP}/32", "dev", "fwd0")
    monitor = subprocess.Popen(["ip", "-n", a.netns, "-o", "monitor", "route"],
                               stdout=subprocess.PIPE, text=True)
    seen: list[str] = []
    try:
        _mark(a.netns, monitor, MARKS[0], seen)
        subprocess.run(["nsenter", f"--net=/run/netns/{a.netns}", sys.executable, "-c", textwrap.dedent(PREPARE),
                        prefix, str(tmp_path), SERVICE_IP], check=True, timeout=60)
        _mark(a.netns, monitor, MARKS[1], seen)
    finally:
        monitor.kill()
        monitor.wait()
    veth = routing.host_veth_name(f"{prefix}-web")
    assert not [ln for ln in seen if SERVICE_IP in ln], seen          # never changed, not even for a moment
    assert f"{SERVICE_IP} dev fwd0" in _ip(a.netns, "route", "show", f"{SERVICE_IP}/32")
    assert veth in _ip(a.netns, "link", "show", veth)                 # the namespace is wired all the same

    # the switch points it at the namespace, as the restore's last step does
    routing.route_service(a.netns, SERVICE_IP, veth)
    assert f"dev {veth}" in _ip(a.netns, "route", "show", f"{SERVICE_IP}/32")
