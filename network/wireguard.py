"""WireGuard interfaces: one per host pair, kernel module or wireguard-go, decided at run time.

    from cloudmig.network import keys, wireguard
    name = wireguard.interface_name("h1", "h2")                 # 'cm' + 10 hex, unique per pair
    key_file = keys.default_path(name)
    my_public = keys.create(key_file)
    wireguard.up(name, "h1", key_file, 51820, "100.64.0.1/32",
                 peers=[wireguard.Peer(h2_public, "198.18.250.12:51820", ["100.64.0.2/32"], 25)])
    wireguard.warm(name, "h1", "100.64.0.2")                   # returns after a handshake
    print(wireguard.status(name, "h1").peers[0].tx_bytes)
    wireguard.down(name, "h1", key_file)                        # no link, socket, process or key left

``up`` routes each peer's allowed IPs (except /0 defaults) through the interface in the main
table, with a larger initial TCP window than Linux's ten segments (``INITIAL_WINDOW``); later
``add_allowed_ip`` calls change only WireGuard's cryptokey table, and routing decisions for
service IPs are made by ``cloudmig.network.routing``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Iterable
from pathlib import Path

from pyroute2 import netns as pyroute2_netns

from cloudmig import errors, paths
from cloudmig.network import _ns, _uapi, _wgkernel, keys
from cloudmig.network._wgtypes import Peer, PeerStatus, PeerUpdate, TunnelStatus

__all__ = ["Peer", "PeerStatus", "TunnelStatus", "HANDSHAKE_TIMEOUT_S", "backend", "find_backend",
           "interface_name", "up", "down", "is_up", "status", "set_peer", "remove_peer",
           "add_allowed_ip", "remove_allowed_ip", "warm", "keep_alive"]

log = logging.getLogger(__name__)

# Segments a TCP connection between two tunnel ends may send in its first round trip, and
# may be offered by the receiver (the routes' initcwnd and initrwnd). The freeze sends CRIU's
# images (~300 KiB compressed) on a new connection: with Linux's 10 segments it took 5 round
# trips of slow start, 350 ms of a 609 ms freeze with a 50 ms round trip (docs/benchmarks.md,
# "A WAN's round trip"); 256 segments (~350 KiB) fit them in one. The tunnel carries only
# cloudmig's own connections and the services' forwarded packets (not started here).
INITIAL_WINDOW = 256

KERNEL, WIREGUARD_GO = "kernel", "wireguard-go"
KERNEL_MODULE_DIR = Path("/sys/module/wireguard")    # there when the module is loaded
IFNAME_MAX = 15              # IFNAMSIZ - 1
# WireGuard retries a lost handshake initiation after REKEY_TIMEOUT (5 s): allow one retry.
HANDSHAKE_TIMEOUT_S = 12
WARM_RESEND_S = 1.0          # how often warm() pokes the tunnel while it waits
WARM_POLL_S = 0.02
SESSION_FRESH_S = 120        # WireGuard's REKEY_AFTER_TIME: a handshake younger than this is warm
WARM_PORT = 9                # discard; the packet only has to enter the tunnel
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def find_backend() -> tuple[str, str] | None:
    """(KERNEL, detail) when the WireGuard module is loaded, else (WIREGUARD_GO, its path),
    or None when neither is there (`cloudmig doctor` shows the same)."""
    if KERNEL_MODULE_DIR.exists():
        return KERNEL, "wireguard kernel module"
    wg_go = paths.tool("wireguard-go")
    if wg_go:
        return WIREGUARD_GO, wg_go
    return None


def backend() -> str:
    """"kernel" when the WireGuard module is loaded, else "wireguard-go" (as `doctor` shows)."""
    found = find_backend()
    if found is None:
        raise errors.NetworkError("Neither the WireGuard kernel module nor wireguard-go is available.",
                                  hint="apt-get install wireguard-go, or run `make bootstrap`.")
    return found[0]


def interface_name(local: str, peer: str) -> str:
    """The interface on ``local`` towards ``peer``: unique per ordered pair, <= 15 chars."""
    if not local or not peer or local == peer:
        raise errors.NetworkError(f"A tunnel needs two different hosts, got {local!r} and {peer!r}.",
                                  hint="Name the source and the destination host.")
    return "cm" + hashlib.sha256(f"{local}\0{peer}".encode()).hexdigest()[:10]


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _IFNAME_RE.match(name):
        raise errors.NetworkError(
            f"{name!r} is not a usable interface name (1-{IFNAME_MAX} letters, digits, '.', '_', '-').",
            hint="Use wireguard.interface_name(local_host, peer_host).")


def _check_cidr(cidr: str, what: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    problem = None
    if "/" not in str(cidr):
        problem = "it has no prefix length"
    else:
        try:
            return ipaddress.ip_interface(cidr)
        except ValueError as exc:
            problem = str(exc)
    raise errors.NetworkError(f"{cidr!r} is not a CIDR ({what}): {problem}.",
                              hint="Write addresses with a prefix length, e.g. 100.64.0.2/32.")


def _check_endpoint(endpoint: str) -> None:
    host, sep, port = str(endpoint).rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
        ok = bool(sep) and 0 < int(port) < 65536
    except ValueError:
        ok = False
    if not ok:
        raise errors.NetworkError(f"Peer endpoint {endpoint!r} is not IP:PORT.",
                                  hint="Give the peer host's public address and WireGuard port, "
                                       "e.g. 198.18.250.12:51820.")


def _check_peers(peers: Iterable[Peer]) -> list[Peer]:
    peers = list(peers)
    seen_keys, seen_endpoints = set(), set()
    for peer in peers:
        keys.decode(peer.public_key, "peer public key")
        if peer.public_key in seen_keys:
            raise errors.NetworkError("The same peer public key is given twice.",
                                      hint="Give each peer once; use set_peer() to change one.")
        seen_keys.add(peer.public_key)
        if peer.endpoint is not None:
            _check_endpoint(peer.endpoint)
            if peer.endpoint in seen_endpoints:
                raise errors.NetworkError(
                    f"Two peers share the endpoint {peer.endpoint}.",
                    hint="Each remote host listens on its own IP:PORT; use one interface per "
                         "host pair (wireguard.interface_name) instead of two peers on one.")
            seen_endpoints.add(peer.endpoint)
        for cidr in peer.allowed_ips:
            _check_cidr(cidr, "peer allowed IP")
    return peers


def _running_backend(name: str) -> str:
    return WIREGUARD_GO if _uapi.is_running(name) else KERNEL


def is_up(name: str, netns: str | None) -> bool:
    """Whether interface ``name`` exists in ``netns`` (or its wireguard-go runs anywhere)."""
    _check_name(name)
    if _uapi.is_running(name):
        return True
    with _ns.iproute(netns, f"looking up {name}") as ipr:
        return _ns.link_index(ipr, name) is not None


def up(name: str, netns: str | None, private_key_file: Path, listen_port: int,
       address_cidr: str, peers: Iterable[Peer] = ()) -> TunnelStatus:
    """Create and configure interface ``name`` in ``netns``; on any failure nothing is left."""
    _check_name(name)
    if netns is not None:
        _ns.netns_path(netns)
    peers = _check_peers(peers)
    address = _check_cidr(address_cidr, "tunnel address")
    if not 0 < int(listen_port) < 65536:
        raise errors.NetworkError(f"Listen port {listen_port} is not a UDP port.",
                                  hint="Use addressing.wireguard_port(used_ports).")
    private_key = keys.load(private_key_file)
    if is_up(name, netns):
        raise errors.NetworkError(
            f"WireGuard interface {name} is already up.",
            hint=f"Call wireguard.down({name!r}, ...) first, or check status() if it should stay.")
    kind = backend()
    try:
        if kind == KERNEL:
            _wgkernel.create(name, netns)
        else:
            _uapi.create(name, netns)
        _configure(name, netns, private_key, int(listen_port),
                   [PeerUpdate(p.public_key, p.endpoint, p.allowed_ips, True, p.persistent_keepalive)
                    for p in peers])
        with _ns.iproute(netns, f"addressing and routing {name}") as ipr:
            index = ipr.link_lookup(ifname=name)[0]
            ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
            ipr.link("set", index=index, state="up")
            for cidr in {c for p in peers for c in p.allowed_ips}:
                net = ipaddress.ip_network(cidr, strict=False)
                if net.prefixlen and net.version == 4:
                    ipr.route("replace", dst=str(net), oif=index,
                              metrics={"initcwnd": INITIAL_WINDOW, "initrwnd": INITIAL_WINDOW})
    except BaseException:
        _teardown(name, netns)
        raise
    log.info("WireGuard %s up in %s (%s, port %d, %d peers)", name, _ns.describe(netns), kind,
             listen_port, len(peers))
    return status(name, netns)


def _configure(name: str, netns: str | None, private_key: str | None, listen_port: int | None,
               updates: list[PeerUpdate]) -> None:
    if _running_backend(name) == WIREGUARD_GO:
        _uapi.configure(name, private_key, listen_port, updates)
    else:
        _wgkernel.configure(name, netns, private_key, listen_port, updates)


def _teardown(name: str, netns: str | None) -> bool:
    removed = _uapi.destroy(name)
    if _ns.exists(netns):
        removed = _wgkernel.destroy(name, netns) or removed   # plain link delete works for both
    return removed


def down(name: str, netns: str | None, private_key_file: Path | None = None) -> bool:
    """Remove interface ``name``: link, UAPI socket, wireguard-go process and key file.

    Idempotent (False when there was nothing to remove). A namespace that is already gone is
    not an error here: whatever of the tunnel is left outside it is still cleaned up.
    """
    _check_name(name)
    removed = _teardown(name, netns)
    if private_key_file is not None:
        removed = keys.remove(private_key_file) or removed
    if removed:
        log.info("WireGuard %s down in %s", name, _ns.describe(netns))
    return removed


def status(name: str, netns: str | None) -> TunnelStatus:
    """Keys, port and per-peer handshake time, bytes each way, endpoint and allowed IPs."""
    _check_name(name)
    if not is_up(name, netns):
        raise errors.NetworkError(f"WireGuard interface {name} is not up in {_ns.describe(netns)}.",
                                  hint="Bring it up with wireguard.up() (`cloudmig tunnel up`).")
    kind = _running_backend(name)
    public, port, peers = _uapi.get(name) if kind == WIREGUARD_GO else _wgkernel.get(name, netns)
    return TunnelStatus(name=name, netns=netns, backend=kind, public_key=public,
                        listen_port=port, peers=tuple(peers))


def _peer(name: str, netns: str | None, public_key: str) -> PeerStatus:
    found = status(name, netns).peer(public_key)
    if found is None:
        raise errors.NetworkError(f"WireGuard interface {name} has no peer with that public key.",
                                  hint="Add it with wireguard.set_peer() first.")
    return found


def set_peer(name: str, netns: str | None, peer: Peer) -> None:
    """Add ``peer``, or update it (its allowed IPs become exactly ``peer.allowed_ips``)."""
    _check_name(name)
    current = status(name, netns)
    others = [Peer(p.public_key, p.endpoint) for p in current.peers if p.public_key != peer.public_key]
    _check_peers([*others, peer])
    _configure(name, netns, None, None, [PeerUpdate(peer.public_key, peer.endpoint, peer.allowed_ips,
                                                    True, peer.persistent_keepalive)])


def remove_peer(name: str, netns: str | None, public_key: str) -> None:
    _peer(name, netns, public_key)
    _configure(name, netns, None, None, [PeerUpdate(public_key, remove=True)])


def _set_allowed(name: str, netns: str | None, public_key: str, cidrs: Iterable[str]) -> None:
    _configure(name, netns, None, None,
               [PeerUpdate(public_key, allowed_ips=tuple(cidrs), replace_allowed_ips=True)])


def _normal(cidr: str) -> str:
    return str(_check_cidr(cidr, "allowed IP").network)


def add_allowed_ip(name: str, netns: str | None, public_key: str, cidr: str) -> None:
    """Let ``peer`` carry ``cidr`` too (idempotent). Routing is routing.py's business."""
    current = _peer(name, netns, public_key).allowed_ips
    if _normal(cidr) not in {_normal(c) for c in current}:
        _set_allowed(name, netns, public_key, [*current, _normal(cidr)])


def remove_allowed_ip(name: str, netns: str | None, public_key: str, cidr: str) -> None:
    """Stop ``peer`` carrying ``cidr`` (idempotent)."""
    current = _peer(name, netns, public_key).allowed_ips
    keep = [c for c in current if _normal(c) != _normal(cidr)]
    if len(keep) != len(current):
        _set_allowed(name, netns, public_key, keep)


def _poke(netns: str | None, address: str) -> None:
    """Send one UDP datagram into the tunnel so that WireGuard starts a handshake."""
    try:
        sock = (pyroute2_netns.create_socket(netns, socket.AF_INET, socket.SOCK_DGRAM, flags=0)
                if netns else socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    except OSError as exc:
        raise errors.NetworkError(f"Cannot open a socket in {_ns.describe(netns)}: {exc}.") from exc
    try:
        sock.sendto(b"cloudmig-warm", (address, WARM_PORT))
    except OSError as exc:
        raise errors.NetworkError(f"Cannot send to {address} in {_ns.describe(netns)}: {exc.strerror}.",
                                  hint="Is the tunnel up, with a route to the peer's tunnel "
                                       "address?") from exc
    finally:
        sock.close()


def keep_alive(name: str, netns: str | None, public_key: str, seconds: int,
               timeout_s: float = HANDSHAKE_TIMEOUT_S) -> None:
    """Turn on the peer's persistent keepalive once this end's session is confirmed (it has
    a latest handshake: the responder's is set by the initiator's first data packet).

    Not earlier: set on an end without a session, a keepalive starts a handshake. Set at both
    ends as they came up, both started one; across a WAN's round trip the two initiations
    crossed, each end dropped its own for the other's, neither completed, and the tunnel sat
    silent for WireGuard's 5 s REKEY_TIMEOUT (or failed a 12 s warm() when that repeated;
    measured with the bench's 50 ms delay lines, docs/network.md). If no session comes
    within ``timeout_s`` the keepalive is set all the same: the handshake it starts is then
    what is wanted."""
    deadline = time.monotonic() + timeout_s
    while _peer(name, netns, public_key).handshake_age_s() is None and time.monotonic() < deadline:
        time.sleep(WARM_POLL_S)
    _configure(name, netns, None, None, [PeerUpdate(public_key, persistent_keepalive=int(seconds))])


def warm(name: str, netns: str | None, peer_overlay_ip: str,
         timeout_s: float = HANDSHAKE_TIMEOUT_S) -> PeerStatus:
    """Complete a handshake with the peer carrying ``peer_overlay_ip``; return its status."""
    target = ipaddress.ip_address(str(peer_overlay_ip))
    peer = next((p for p in status(name, netns).peers
                 if any(target in ipaddress.ip_network(c, strict=False) for c in p.allowed_ips)), None)
    if peer is None:
        raise errors.NetworkError(f"No peer of {name} carries {target}.",
                                  hint="Pass the peer host's tunnel address (its allowed IP).")
    started = time.monotonic()
    deadline, next_poke = started + timeout_s, started
    while True:
        age = peer.handshake_age_s()
        if age is not None and age < SESSION_FRESH_S:
            log.info("WireGuard %s warm towards %s (%.0f ms)", name, target,
                     (time.monotonic() - started) * 1000)
            return peer
        now = time.monotonic()
        if now >= deadline:
            raise errors.NetworkError(
                f"No WireGuard handshake on {name} with {peer.endpoint} within {timeout_s:g} s.",
                hint="Check that the peer's tunnel is up with this host's public key, and that "
                     "UDP to its endpoint is not blocked.")
        if now >= next_poke:
            _poke(netns, str(target))
            next_poke = now + WARM_RESEND_S
        time.sleep(WARM_POLL_S)
        peer = _peer(name, netns, peer.public_key)
