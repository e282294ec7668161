"""Done-when (1): the service IP moves from host A to host B; A's public port keeps working.

A client in the root namespace holds one connection to A_PUBLIC:8080 and sends a request
every few milliseconds; the service IP is moved to B (a second server on the same IP there);
new connections to A_PUBLIC:8080 are then answered by B, through A (the client's peer stays
A's public address), and the tunnel's status shows the traffic and a handshake.
"""

from __future__ import annotations

import socket
import threading
import time

from cloudmig.network import addressing, proxy, routing, wireguard

from netlab import clean_up_through_library, line_server, netns_socket

SERVICE_PORT, PUBLIC_PORT = 8000, 8080
REQUEST_INTERVAL_S = 0.005
HELD_REQUESTS_MAX = 2000          # the held connection stops after this many or at the switch
CONNECT_TIMEOUT_S = 3


def ask(address: tuple[str, int], text: str, netns: str | None = None) -> tuple[str, tuple]:
    """One new connection (from the root namespace, or from ``netns``): send a line, return
    the answer and the peer the client saw."""
    sock = netns_socket(netns) if netns else socket.socket()
    sock.settimeout(CONNECT_TIMEOUT_S)
    with sock:
        sock.connect(address)
        sock.sendall(text.encode() + b"\n")
        answer = sock.makefile("rb").readline().decode().strip()
        return answer, sock.getpeername()


class HeldClient(threading.Thread):
    """One connection, a request every REQUEST_INTERVAL_S, answers recorded in order."""

    def __init__(self, address):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT_S)
        self.answers: list[str] = []
        self.error: str | None = None
        self.stop = threading.Event()

    def run(self):
        reader = self.sock.makefile("rb")
        try:
            for seq in range(HELD_REQUESTS_MAX):
                if self.stop.is_set():
                    break
                self.sock.sendall(f"req {seq}\n".encode())
                self.answers.append(reader.readline().decode().strip())
                time.sleep(REQUEST_INTERVAL_S)
        except OSError as exc:          # allowed to break here: CRIU keeps it in the real move
            self.error = repr(exc)
        finally:
            self.sock.close()


def move_service_ip(lab, ta, tb, service):
    """The switch, in the order that keeps the tunnel warm and replies on the right path."""
    wireguard.warm(tb.ifname, tb.netns, ta.overlay_ip)
    wireguard.add_allowed_ip(ta.ifname, ta.netns, tb.public_key, f"{service}/32")
    wireguard.add_allowed_ip(tb.ifname, tb.netns, ta.public_key, "0.0.0.0/0")
    routing.return_via(tb.netns, service, tb.ifname)
    routing.route_service(ta.netns, service, ta.ifname)


def test_service_ip_moves_and_public_port_follows(lab):
    a, b = lab.hosts["a"], lab.hosts["b"]
    ta, tb = lab.tunnel_pair()
    service = str(addressing.service_ip(set()))
    link_a = lab.container("a", service)
    line_server(lab, link_a.container_netns, service, SERVICE_PORT, "A")
    proxy.publish(a.netns, a.public_ip, PUBLIC_PORT, service, SERVICE_PORT, "tcp", owner="web")
    public = (a.public_ip, PUBLIC_PORT)
    assert ask(public, "hello") == ("A hello", public)
    assert ask(public, "local", a.netns) == ("A local", public)      # chain output: from A itself

    held = HeldClient(public)
    held.start()
    time.sleep(0.3)
    before = wireguard.status(ta.ifname, ta.netns).peer(tb.public_key)

    link_b = lab.container("b", service)                 # destination prepared first
    line_server(lab, link_b.container_netns, service, SERVICE_PORT, "B")
    started = time.monotonic()
    move_service_ip(lab, ta, tb, service)
    switch_ms = (time.monotonic() - started) * 1000

    answers = [ask(public, f"new {i}") for i in range(20)]
    assert answers == [(f"B new {i}", public) for i in range(20)]   # B answers, via A's address
    assert ask(public, "local", a.netns) == ("B local", public)
    held.stop.set()
    held.join(timeout=10)
    assert held.answers[:10] == [f"A req {i}" for i in range(10)]  # in order, from A, before
    after_a = wireguard.status(ta.ifname, ta.netns).peer(tb.public_key)
    after_b = wireguard.status(tb.ifname, tb.netns).peer(ta.public_key)
    assert after_a.latest_handshake > 0 and after_b.latest_handshake > 0
    assert after_a.tx_bytes > before.tx_bytes and after_a.rx_bytes > before.rx_bytes
    assert f"{service}/32" in after_a.allowed_ips and "0.0.0.0/0" in after_b.allowed_ips
    print(f"\nswitch {switch_ms:.1f} ms; held connection: {len(held.answers)} answers, "
          f"error after switch: {held.error}; tunnel A->B tx {after_a.tx_bytes} rx {after_a.rx_bytes}")

    # undo (what a failed migration does): the service IP goes home, replies stop detouring
    routing.route_service(a.netns, service, link_a.host_veth)
    assert routing.remove_return_via(b.netns, service)
    assert not routing.remove_return_via(b.netns, service)           # idempotent
    assert ask(public, "back") == ("A back", public)

    # cleanup through the library leaves nothing behind (done-when 3)
    assert proxy.remove_all(a.netns) and not proxy.remove_all(a.netns)
    assert clean_up_through_library(lab) == []
    assert proxy.list_forwards(a.netns) == []
