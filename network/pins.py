"""Pin the reply path of connections a migration carries, one connection at a time.

    from cloudmig.network import pins
    pins.pin("d", "100.96.0.1", [pins.Pin("198.18.5.1", 55272, 6379, "cm1a2b3c4d5e")])
    pins.unpin("d", "100.96.0.1")

``replies`` marks a connection by the tunnel its first packet came through. A connection
restored by CRIU on a new host may instead start with a packet of the container's own (a
retransmission, a reply queued at the freeze): nothing marks it, and no single fallback
route is right when the container has clients through several hosts. The migration knows,
at the freeze, which host each connection belongs to (the source's conntrack tells), so it
pins each one to the tunnel towards that host before the container resumes.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
import threading

from cloudmig import errors
from cloudmig.network import _ns, replies

__all__ = ["Pin", "Connection", "pin", "unpin", "connections_of"]

log = logging.getLogger(__name__)
_changes = threading.RLock()        # see _ns.one_at_a_time

_COMMENT = "pin svc={service}"
CONNTRACK = "/proc/net/nf_conntrack"


@dataclasses.dataclass(frozen=True)
class Pin:
    client_ip: str
    client_port: int
    service_port: int
    tunnel_ifname: str


@dataclasses.dataclass(frozen=True)
class Connection:
    """A TCP connection of a service IP as this host's conntrack sees it."""
    client_ip: str
    client_port: int
    service_port: int
    via_tunnel: str | None      # the tracked tunnel it came through; None: this host's own


@_ns.one_at_a_time(_changes)
def pin(netns: str | None, service_ip: str, connections: list[Pin]) -> int:
    """Send replies of each connection into its tunnel (tracking the tunnel if needed)."""
    service = str(ipaddress.IPv4Address(service_ip))
    ids = {t.ifname: t.mark_id for t in replies.list_tracked(netns)}
    lines = []
    keep = f"0x{0xFFFFFFFF ^ replies.MARK_MASK:08x}"
    for c in connections:
        if c.tunnel_ifname not in ids:
            ids[c.tunnel_ifname] = replies.track_tunnel(netns, c.tunnel_ifname)
        mark = f"0x{replies.mark_of(ids[c.tunnel_ifname]):08x}"
        match = (f"ip saddr {service} tcp sport {int(c.service_port)} "
                 f"ip daddr {ipaddress.IPv4Address(c.client_ip)} tcp dport {int(c.client_port)}")
        lines.append(f"insert rule {replies.FAMILY} {replies.TABLE} {replies.CHAIN} {match} "
                     f"ct mark set ct mark and {keep} or {mark} "
                     f"meta mark set meta mark and {keep} or {mark} "
                     f"comment \"{_COMMENT.format(service=service)}\"")
    if lines:
        _ns.nft(netns, ["-f", "-"], f"pinning {len(lines)} connections of {service}", "\n".join(lines) + "\n")
        log.info("%s pinned %d connections of %s", _ns.describe(netns), len(lines), service)
    return len(lines)


@_ns.one_at_a_time(_changes)
def unpin(netns: str | None, service_ip: str) -> int:
    service = str(ipaddress.IPv4Address(service_ip))
    if not _ns.exists(netns) or not _ns.nft_table_exists(netns, replies.FAMILY, replies.TABLE):
        return 0
    doomed = [r for r in _ns.nft_rules(netns, replies.FAMILY, replies.TABLE)
              if r.get("comment") == _COMMENT.format(service=service)]
    if doomed:
        _ns.nft(netns, ["-f", "-"], f"unpinning connections of {service}",
                "".join(f"delete rule {replies.FAMILY} {replies.TABLE} {replies.CHAIN} handle {r['handle']}\n"
                        for r in doomed))
    return len(doomed)


_FIELD = re.compile(r"(\w+)=(\S+)")


def connections_of(service_ip: str, established_only: bool = False) -> list[Connection]:
    """TCP connections of ``service_ip`` in the *current* namespace's conntrack table (only
    those still ESTABLISHED if asked: closed ones linger in TIME_WAIT for minutes)."""
    try:
        with open(CONNTRACK) as fh:
            lines = fh.readlines()
    except OSError as exc:
        raise errors.NetworkError(f"Cannot read {CONNTRACK}: {exc.strerror}.",
                                  hint="The kernel needs nf_conntrack (it is there once NAT is used).") from exc
    by_id = {t.mark_id: t.ifname for t in replies.list_tracked(None)}
    found = []
    for line in lines:
        if " tcp " not in line or (established_only and " ESTABLISHED " not in line):
            continue
        pairs = _FIELD.findall(line)
        src = [v for k, v in pairs if k == "src"]
        dst = [v for k, v in pairs if k == "dst"]
        sport = [v for k, v in pairs if k == "sport"]
        dport = [v for k, v in pairs if k == "dport"]
        if len(src) < 2 or len(sport) < 2:
            continue
        mark = int(dict(pairs).get("mark", "0"))
        mark_id = (mark & replies.MARK_MASK) >> replies.MARK_SHIFT
        via = by_id.get(mark_id)
        if src[1] == service_ip:        # original: client -> (public or service); reply from service
            found.append(Connection(src[0], int(sport[0]), int(sport[1]), via))
        elif src[0] == service_ip:      # picked up server-first: the service spoke first
            found.append(Connection(dst[0], int(dport[0]), int(sport[0]), via))
    return found
