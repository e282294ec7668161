"""WireGuard tunnels between hosts, driven through their agents.

    tunnels.up("h1", "h2")          # keys made on each host, never leave it; handshake done
    tunnels.status()                # per tunnel and side: handshake, bytes, endpoint
    tunnels.down("h1", "h2")        # interfaces, key files and wireguard-go gone

One WireGuard interface per host pair (see docs/network.md): each side's peer may carry any
source address, because replies for clients of forwarded ports come back through it.

Firewalls follow tunnels: before the tunnel comes up, each side's provider opens that side's
WireGuard port to the other side's public address only (a cloud host's security group / NSG;
nothing for lab and adopted hosts); taking the tunnel down closes both again.
"""

from __future__ import annotations

import contextlib
import logging
import time

from cloudmig import errors, paths, providers
from cloudmig.agent import dial
from cloudmig.inventory import Inventory, TunnelRecord, tunnel_key
from cloudmig.network import addressing, wireguard

log = logging.getLogger(__name__)

KEEPALIVE_S = 25  # keeps NAT mappings of cloud hosts open; harmless in the lab


def interface_name(local: str, peer: str) -> str:
    # unique per machine: wireguard-go's UAPI socket names are shared by all namespaces
    salt = str(paths.state_dir())
    return wireguard.interface_name(f"{salt}/{local}", f"{salt}/{peer}")


def _ports_used(data, host: str) -> set[int]:
    """UDP ports taken at ``host``'s public address: by its tunnels, and by those of any other
    host record at the same address (a machine adopted over SSH inside a lab host shares it)."""
    address = data.host(host).public_address
    same = {h.name for h in data.hosts.values() if h.name == host or h.public_address == address}
    used = set()
    for t in data.tunnels.values():
        if t.a in same:
            used.add(t.port_a)
        if t.b in same:
            used.add(t.port_b)
    return used


def _firewall_sides(data, rec: TunnelRecord):
    """(host, its port, the peer's public address) for each side of ``rec`` still known."""
    for host, port, peer in ((rec.a, rec.port_a, rec.b), (rec.b, rec.port_b, rec.a)):
        hrec, prec = data.hosts.get(host), data.hosts.get(peer)
        if hrec is not None and prec is not None and prec.public_address:
            yield hrec, port, prec.public_address


def _open_firewalls(data, rec: TunnelRecord) -> None:
    for hrec, port, peer_address in _firewall_sides(data, rec):
        providers.load(hrec.provider).allow_tunnel_peer(hrec, peer_address, port)


def _close_firewalls(data, rec: TunnelRecord) -> None:
    for hrec, port, peer_address in _firewall_sides(data, rec):
        try:
            providers.load(hrec.provider).revoke_tunnel_peer(hrec, peer_address, port)
        except errors.CloudmigError as exc:     # keep tearing down; the rule names only that peer
            log.warning("could not close udp/%s of %s to %s: %s", port, hrec.name, peer_address, exc)


def get(a: str, b: str, inv: Inventory | None = None) -> TunnelRecord | None:
    return (inv or Inventory()).read().tunnels.get(tunnel_key(a, b))


def _clients(session, *records):
    """Agent clients for ``records``: the session's own channels (kept open), or new ones
    closed on exit."""
    stack = contextlib.ExitStack()
    if session is not None:
        return stack, [session.agent(r.name).client for r in records]
    return stack, [stack.enter_context(dial.connect(r)) for r in records]


def up(a: str, b: str, inv: Inventory | None = None, *, exist_ok: bool = False,
       session=None) -> TunnelRecord:
    """Bring the tunnel a-b up (``session``: over its channels, see cloudmig.control.session)."""
    inv = inv or Inventory()
    if a == b:
        raise errors.ConfigError(f"A tunnel needs two different hosts; got {a} twice.")
    with inv.transaction() as data:
        ha, hb = data.host(a), data.host(b)
        for h in (ha, hb):
            if not h.public_address or not h.overlay_address:
                raise errors.ConfigError(f"Host {h.name} has no public or tunnel address yet.")
        existing = data.tunnels.get(tunnel_key(a, b))
        if existing:
            if exist_ok:
                if session is not None:
                    repair(existing, ha, hb, session)
                return existing
            raise errors.ConfigError(f"The tunnel between {a} and {b} is already up.",
                                     hint=f"`cloudmig tunnel status` shows it; `cloudmig tunnel down {a} {b}` removes it.")
        rec = TunnelRecord(a=a, b=b, iface_a=interface_name(a, b), iface_b=interface_name(b, a),
                           port_a=addressing.wireguard_port(_ports_used(data, a)),
                           port_b=addressing.wireguard_port(_ports_used(data, b)),
                           created_at=time.time())
        data.tunnels[rec.key] = rec  # reserved; removed again if bringing it up fails
    try:
        _open_firewalls(inv.read(), rec)
        stack, (ag_a, ag_b) = _clients(session, ha, hb)
        with stack:
            pub_a = ag_a.call("tunnel.key", ifname=rec.iface_a)
            pub_b = ag_b.call("tunnel.key", ifname=rec.iface_b)
            _up_end(ag_a, rec.iface_a, rec.port_a, ha, hb, rec.port_b, pub_b)
            _up_end(ag_b, rec.iface_b, rec.port_b, hb, ha, rec.port_a, pub_a)
            _warm_then_keep_alive(rec, ag_a, ag_b, hb)
    except BaseException:
        _teardown(inv, rec)
        raise
    return rec


def _up_end(agent, ifname: str, port: int, host, peer, peer_port: int, peer_key: str) -> None:
    # no keepalive yet: it would start a handshake at each end at once (_warm_then_keep_alive)
    agent.call("tunnel.up", ifname=ifname, listen_port=port, address=host.overlay_address,
               peer_public_key=peer_key, peer_endpoint=f"{peer.public_address}:{peer_port}",
               peer_address=peer.overlay_address, keepalive_s=0)


def _warm_then_keep_alive(rec: TunnelRecord, ag_a, ag_b, hb) -> None:
    """One handshake, started by a; then each end's keepalive, once it has the session.
    Keepalives set as the ends came up started a handshake at both, which crossed over a
    WAN and stalled the tunnel for WireGuard's 5 s retry (network/wireguard.keep_alive)."""
    ag_a.call("tunnel.warm", ifname=rec.iface_a, peer_address=hb.overlay_address)
    ag_a.call("tunnel.keepalive", ifname=rec.iface_a, keepalive_s=KEEPALIVE_S)
    ag_b.call("tunnel.keepalive", ifname=rec.iface_b, keepalive_s=KEEPALIVE_S)


def repair(rec: TunnelRecord, ha, hb, session) -> list[str]:
    """Bring back an end of the tunnel whose interface vanished (its wireguard-go died, or
    its host rebooted), with the same keys, port and peer; the agent puts back the routes it
    had through it. Returns the hosts whose end was repaired (usually none: two status calls)."""
    ag_a, ag_b = session.agent(rec.a).client, session.agent(rec.b).client
    ends = ((ag_a, rec.iface_a, rec.port_a, ha, hb, rec.port_b, ag_b, rec.iface_b),
            (ag_b, rec.iface_b, rec.port_b, hb, ha, rec.port_a, ag_a, rec.iface_a))
    repaired = []
    for agent, ifname, port, host, peer, peer_port, peer_agent, peer_if in ends:
        try:
            agent.call("tunnel.status", ifname=ifname)
            continue
        except errors.AgentLost:
            raise
        except errors.CloudmigError:
            pass                      # the interface is gone
        _up_end(agent, ifname, port, host, peer, peer_port, peer_agent.call("tunnel.key", ifname=peer_if))
        repaired.append(host.name)
    if repaired:
        _warm_then_keep_alive(rec, ag_a, ag_b, hb)
    return repaired


def _teardown(inv: Inventory, rec: TunnelRecord) -> None:
    data = inv.read()
    _close_firewalls(data, rec)
    for host, ifname in ((rec.a, rec.iface_a), (rec.b, rec.iface_b)):
        hrec = data.hosts.get(host)
        if hrec is None:
            continue
        try:
            with dial.connect(hrec) as agent:
                agent.call("tunnel.down", ifname=ifname)
        except errors.AgentError:
            pass  # host gone: its namespace (and interface) went with it
    with inv.transaction() as data:
        data.tunnels.pop(rec.key, None)


def down(a: str, b: str, inv: Inventory | None = None) -> None:
    inv = inv or Inventory()
    data = inv.read()
    data.host(a), data.host(b)
    rec = data.tunnels.get(tunnel_key(a, b))
    if rec is None:
        raise errors.ConfigError(f"There is no tunnel between {a} and {b}.",
                                 hint="`cloudmig tunnel status` lists the tunnels.")
    users = [c.name for c in data.containers.values()
             if any({f.host, c.host} == {a, b} for f in c.forwards)]
    if users:
        raise errors.ConfigError(f"The tunnel {a}-{b} carries forwarded endpoints of "
                                 f"{', '.join(sorted(users))}.",
                                 hint="Cut them over first (remove the forwards), then take the tunnel down.")
    _teardown(inv, rec)


def down_all(hosts: set[str], inv: Inventory | None = None) -> None:
    """Remove every tunnel touching ``hosts`` (used when hosts are destroyed)."""
    inv = inv or Inventory()
    for rec in list(inv.read().tunnels.values()):
        if rec.a in hosts or rec.b in hosts:
            _teardown(inv, rec)


def status(inv: Inventory | None = None) -> list[dict]:
    inv = inv or Inventory()
    data = inv.read()
    out = []
    for rec in sorted(data.tunnels.values(), key=lambda r: r.key):
        sides = []
        for host, ifname in ((rec.a, rec.iface_a), (rec.b, rec.iface_b)):
            try:
                with dial.connect(data.host(host)) as agent:
                    st = agent.call("tunnel.status", ifname=ifname)
                peer = (st.get("peers") or [{}])[0]
                sides.append({"host": host, "interface": ifname, "listen_port": st["listen_port"],
                              "backend": st["backend"], "endpoint": peer.get("endpoint"),
                              "latest_handshake": peer.get("latest_handshake"),
                              "keepalive_s": peer.get("persistent_keepalive"),
                              "rx_bytes": peer.get("rx_bytes", 0), "tx_bytes": peer.get("tx_bytes", 0),
                              "state": "up"})
            except errors.CloudmigError as exc:
                sides.append({"host": host, "interface": ifname, "state": f"error: {exc}"})
        out.append({"a": rec.a, "b": rec.b, "sides": sides})
    return out


def throughput(session, src: str, dst: str, nbytes: int, seconds: float | None = None) -> float:
    """MiB/s from ``src`` to ``dst`` through their tunnel (up already): one bulk TCP transfer
    from agent to agent of ``nbytes``, or of what ``seconds`` let through if they pass first.
    Raises a CloudmigError if either end or the tunnel does not carry it."""
    address = session.host(dst).overlay_address
    sink = session.agent(dst).probe
    port = sink.sink(address)
    try:
        session.agent(src).probe.blast(address, port, nbytes, seconds)
    except errors.CloudmigError:
        with contextlib.suppress(errors.CloudmigError):
            sink.sink_result(port, timeout_s=0)        # drops the waiting sink
        raise
    got, took = sink.sink_result(port)
    if got <= 0:
        raise errors.NetworkError(f"The throughput probe {src} -> {dst} carried nothing.")
    return got / max(took, 1e-6) / (1 << 20)
