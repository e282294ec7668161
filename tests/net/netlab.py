"""Lab helpers for the network tests: host namespaces on a bridge, each test its own.

Every name starts with ``cmt`` + random hex, the "WAN" is a random /24 of the 198.18.0.0/15
benchmarking range on a bridge in the root namespace, hosts have no default route and there is
no NAT: traffic stays on this machine. Everything is removed in ``finally``, even on failure.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns
from pyroute2.netlink.exceptions import NetlinkError

from cloudmig.network import _uapi, addressing, keys, routing, wireguard

WAN = ipaddress.IPv4Network("198.18.0.0/15")

def uniq() -> str:
    return "cmt" + secrets.token_hex(3)


def _free_subnet(ipr: IPRoute) -> ipaddress.IPv4Network:
    used = [ipaddress.IPv4Network(f"{r.get('dst')}/{r['dst_len']}", strict=False)
            for r in ipr.get_routes(family=2) if r.get("dst")]
    for _ in range(100):
        net = random.choice(list(WAN.subnets(new_prefix=24))[1:])
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free /24 in 198.18.0.0/15")


@dataclasses.dataclass
class Host:
    name: str
    netns: str
    public_ip: str


@dataclasses.dataclass
class Tunnel:
    netns: str
    ifname: str
    key_file: Path
    public_key: str
    overlay_ip: str
    port: int


@dataclasses.dataclass
class Lab:
    prefix: str
    bridge: str
    subnet: ipaddress.IPv4Network
    hosts: dict
    procs: list = dataclasses.field(default_factory=list)
    tunnels: list = dataclasses.field(default_factory=list)
    containers: list = dataclasses.field(default_factory=list)
    overlay: dict = dataclasses.field(default_factory=dict)     # host name -> tunnel address

    def tunnel_pair(self, a: str = "a", b: str = "b") -> tuple[Tunnel, Tunnel]:
        """A WireGuard interface on each host towards the other, warmed up. A host keeps one
        overlay address over all its tunnels; each tunnel end gets the host's next free port."""
        ha, hb = self.hosts[a], self.hosts[b]
        ends = []
        for me, other in ((ha, hb), (hb, ha)):
            if me.name not in self.overlay:
                self.overlay[me.name] = str(addressing.host_address(self.overlay.values()))
            ifname = wireguard.interface_name(me.netns, other.netns)
            key_file = keys.default_path(ifname)
            ports = {t.port for t in self.tunnels if t.netns == me.netns}
            ends.append(Tunnel(me.netns, ifname, key_file, keys.create(key_file),
                               self.overlay[me.name], addressing.wireguard_port(ports)))
            self.tunnels.append(ends[-1])
        for me, other, other_host in ((ends[0], ends[1], hb), (ends[1], ends[0], ha)):
            wireguard.up(me.ifname, me.netns, me.key_file, me.port, f"{me.overlay_ip}/32",
                         peers=[wireguard.Peer(other.public_key, f"{other_host.public_ip}:{other.port}",
                                               [f"{other.overlay_ip}/32"])])
        wireguard.warm(ends[0].ifname, ends[0].netns, ends[1].overlay_ip)
        return ends[0], ends[1]

    def add_host(self, name: str) -> Host:
        """Host namespace ``prefix+name`` with one leg (wan0) on the bridge."""
        netns = f"{self.prefix}{name}"
        pyroute2_netns.create(netns)
        host = self.hosts[name] = Host(name, netns, str(self.subnet[11 + len(self.hosts)]))
        with IPRoute() as ipr:
            leg = f"{netns}w"
            ipr.link("add", ifname=leg, kind="veth", peer={"ifname": "wan0", "net_ns_fd": netns})
            idx = ipr.link_lookup(ifname=leg)[0]
            ipr.link("set", index=idx, master=ipr.link_lookup(ifname=self.bridge)[0], state="up")
        with IPRoute(netns=netns, flags=0) as hipr:
            lo, wan = hipr.link_lookup(ifname="lo")[0], hipr.link_lookup(ifname="wan0")[0]
            hipr.link("set", index=lo, state="up")
            hipr.addr("add", index=wan, address=host.public_ip, prefixlen=24)
            hipr.link("set", index=wan, state="up")
        return host

    def container(self, host: str, service_ip: str) -> routing.ContainerLink:
        name = f"{self.prefix}c{len(self.containers)}"
        self.containers.append((self.hosts[host].netns, name))
        return routing.create_container_netns(self.hosts[host].netns, name, service_ip)

    def start(self, netns: str, code: str, *args: str) -> subprocess.Popen:
        """Run Python ``code`` in ``netns``; it must print 'ready' once it listens."""
        proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{netns}", sys.executable, "-c",
                                 textwrap.dedent(code), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        line = proc.stdout.readline()   # pytest-timeout bounds the wait
        if line.strip() != "ready":
            raise RuntimeError(f"server in {netns} did not start: {line}{proc.stderr.read()}")
        return proc


# A line server: answers every line with "<label> <line>", one thread per connection.
LINE_SERVER = """
    import socket, sys, threading
    ip, port, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((ip, port)); srv.listen(64)
    print("ready", flush=True)
    def serve(conn):
        with conn, conn.makefile("rwb") as f:
            for line in f:
                f.write(label.encode() + b" " + line); f.flush()
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def line_server(lab: Lab, netns: str, ip: str, port: int, label: str) -> subprocess.Popen:
    return lab.start(netns, LINE_SERVER, ip, str(port), label)


def served_client(lab: Lab, host: Host, port: int, label: str = "svc"):
    """A line server on ``host``'s public address and a client connected to it from the root
    namespace, checked with one round trip: (socket, its file)."""
    line_server(lab, host.netns, host.public_ip, port, label)
    client = socket.create_connection((host.public_ip, port), timeout=10)
    f = client.makefile("rwb")
    f.write(b"before\n"); f.flush()
    assert f.readline() == f"{label} before\n".encode()
    return client, f


def netns_socket(netns: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket that lives in ``netns`` (opened there by a short-lived child)."""
    return pyroute2_netns.create_socket(netns, socket.AF_INET, kind, flags=0)


def _teardown(lab: Lab) -> None:
    for proc in lab.procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    for tun in lab.tunnels:
        wireguard.down(tun.ifname, tun.netns, tun.key_file)
    for host_netns, name in lab.containers:
        routing.delete_container_netns(host_netns, name)
    for host in lab.hosts.values():
        if os.path.exists(f"/run/netns/{host.netns}"):
            pyroute2_netns.remove(host.netns)
    with IPRoute() as ipr:
        for ifname in [lab.bridge] + [f"{h.netns}w" for h in lab.hosts.values()]:
            found = ipr.link_lookup(ifname=ifname)
            if found:
                try:
                    ipr.link("del", index=found[0])
                except NetlinkError as exc:
                    if exc.code != errno.ENODEV:   # a veth leg goes by itself with its peer's namespace
                        raise


@pytest.fixture
def lab(state_dir):
    """Root-namespace bridge + host namespaces a and b, each with one leg on the bridge."""
    if os.geteuid() != 0:
        pytest.skip("network tests need root")
    prefix = uniq()
    with IPRoute() as ipr:
        subnet = _free_subnet(ipr)
    lab = Lab(prefix, f"{prefix}br", subnet, {})
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=lab.bridge, kind="bridge")
            br = ipr.link_lookup(ifname=lab.bridge)[0]
            ipr.addr("add", index=br, address=str(subnet[1]), prefixlen=24)
            ipr.link("set", index=br, state="up")
        for name in ("a", "b"):
            lab.add_host(name)
        yield lab
    finally:
        _teardown(lab)


def clean_up_through_library(lab: Lab) -> list[str]:
    """Stop the servers, remove containers and tunnels with the library (each must have been
    there), and return what is left (should be nothing)."""
    for proc in lab.procs:
        proc.kill()
        proc.wait()
    for host_netns, name in lab.containers:
        assert routing.delete_container_netns(host_netns, name)
    for tun in lab.tunnels:
        assert wireguard.down(tun.ifname, tun.netns, tun.key_file)
    return leftovers(lab)


def leftovers(lab: Lab) -> list[str]:
    """What of the network layer is still there (should be nothing after cleanup)."""
    found = []
    for tun in lab.tunnels:
        if _uapi.pids(tun.ifname):
            found.append(f"wireguard-go process for {tun.ifname}")
        if _uapi.socket_path(tun.ifname).exists():
            found.append(f"UAPI socket of {tun.ifname}")
        if tun.key_file.exists():
            found.append(f"key file {tun.key_file}")
    for _, name in lab.containers:
        if os.path.exists(f"/run/netns/{name}"):
            found.append(f"container netns {name}")
    for host in lab.hosts.values():
        with IPRoute(netns=host.netns, flags=0) as ipr:
            found += [f"{host.name}: link {link.get('ifname')}" for link in ipr.get_links()
                      if link.get("ifname") not in ("lo", "wan0")]
            found += [f"{host.name}: rule {r.get('priority')} table {r.get('table')}"
                      for r in ipr.get_rules(family=2) if (r.get("priority") or 0) not in (0, 32766, 32767)]
            found += [f"{host.name}: route {r.get('dst')}/{r['dst_len']} table {r.get('table')}"
                      for r in ipr.get_routes(family=2, table=0)
                      if r.get("table") not in (255,) and r.get("dst") != str(lab.subnet.network_address)]
    return found
