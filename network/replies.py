"""Replies go back through the tunnel their connection came in from (conntrack marks).

    from cloudmig.network import replies
    mark_id = replies.track_tunnel("d", "cm1a2b3c4d5e")     # connections from F1 answer via F1
    replies.track_tunnel("d", "cm9f8e7d6c5b")               # ... and from F2 via F2
    for t in replies.list_tracked("d"):
        print(t.ifname, t.mark_id, t.table, t.connections, t.replies)
    replies.untrack_tunnel("d", "cm1a2b3c4d5e")             # remove_all("d") undoes everything

A host D that runs a container with service IP S may receive S's connections from several
forwarders (the hosts S lived on before, each DNATing its public port and routing S into its
own tunnel to D) and from its own published ports. Each connection's replies must leave the
way it came, so that the host that NATed it un-NATs them. Table ``ip cloudmig_replies``,
chain ``prerouting`` (filter hook, priority mangle: after conntrack, before the DNAT of
table ``ip cloudmig``) holds, per tracked tunnel:

- ingress: a packet arriving on the tunnel, in the original direction of a connection whose
  ct mark is still unset, stamps the tunnel's id into the ct mark. A connection picked up
  mid-stream (established on F before the container moved, first seen by D through the
  tunnel) counts: with ``nf_conntrack_tcp_loose=1`` it is new to D's conntrack, and so is a
  connection D saw before tracking started.
- reply: a packet from a service IP (100.96.0.0/11) in the reply direction of a marked
  connection gets the id as its packet mark; ``ip rule fwmark ID lookup 500000+ID`` (priority
  900) with ``default dev <tunnel>`` in that table sends it back into the tunnel.

And once per host, "direct": replies of connections this host DNATed itself (its own
published ports) get the mark DIRECT, routed by the main table, so that a ``routing.return_via``
rule for S (priority 1000), kept as the fallback for connections no tunnel has marked, never
diverts them. Ids live in bits 16-27 of the mark (``MARK_MASK``); a tunnel's id is derived from
its interface name (probing on a collision) and recorded in the rule comments.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import threading

from cloudmig import errors
from cloudmig.network import _ns, addressing

__all__ = ["TABLE", "MARK_MASK", "MARK_SHIFT", "DIRECT_ID", "REPLY_TABLE_BASE", "RULE_PRIORITY",
           "TrackedTunnel", "mark_of", "track_tunnel", "untrack_tunnel", "list_tracked", "remove_all"]

log = logging.getLogger(__name__)
_changes = threading.RLock()        # see _ns.one_at_a_time

FAMILY, TABLE, CHAIN = "ip", "cloudmig_replies", "prerouting"
MARK_SHIFT = 16
MARK_MASK = 0x0FFF << MARK_SHIFT        # 4095 ids; the other mark bits are left to others
DIRECT_ID = 0x0FFF                      # "answer directly" (main table)
MAX_TUNNEL_ID = DIRECT_ID - 1
# Below routing's per-service tables (addressing.ROUTE_TABLE_BASE = 1,000,000 + offset).
REPLY_TABLE_BASE = 500_000
RULE_PRIORITY = 900                     # before routing.RULE_PRIORITY (return_via, 1000)
MAIN_TABLE = 254
_COMMENT_RE = re.compile(r"^(ingress|reply) tunnel=(\S+) id=(\d+)$")
DIRECT_COMMENT = "direct"


@dataclasses.dataclass(frozen=True)
class TrackedTunnel:
    ifname: str
    mark_id: int
    table: int
    connections: int      # connections stamped with this tunnel (ingress rule counter)
    replies: int          # reply packets sent back into it (reply rule counter)


def mark_of(mark_id: int) -> int:
    """The packet/ct mark value (within MARK_MASK) of ``mark_id``."""
    return mark_id << MARK_SHIFT


def _preferred_id(ifname: str) -> int:
    return 1 + int.from_bytes(hashlib.sha256(ifname.encode()).digest()[:4], "big") % MAX_TUNNEL_ID


def _packets(rule: dict) -> int:
    return next((e["counter"]["packets"] for e in rule.get("expr", []) if "counter" in e), 0)


def list_tracked(netns: str | None) -> list[TrackedTunnel]:
    """The tunnels whose connections are answered through them, with their counters."""
    found: dict[str, dict] = {}
    for rule in _ns.nft_rules(netns, FAMILY, TABLE):
        match = _COMMENT_RE.match(rule.get("comment", ""))
        if match:
            role, ifname, mark_id = match.group(1), match.group(2), int(match.group(3))
            entry = found.setdefault(ifname, {"mark_id": mark_id, "ingress": 0, "reply": 0})
            entry[role] += _packets(rule)
    return [TrackedTunnel(name, e["mark_id"], REPLY_TABLE_BASE + e["mark_id"], e["ingress"], e["reply"])
            for name, e in sorted(found.items())]


def _allocate(ifname: str, taken: set[int]) -> int:
    mark_id = _preferred_id(ifname)
    for _ in range(MAX_TUNNEL_ID):
        if mark_id not in taken:
            return mark_id
        mark_id = mark_id % MAX_TUNNEL_ID + 1
    raise errors.NetworkError(f"All {MAX_TUNNEL_ID} reply marks are in use.",
                              hint="Untrack tunnels of hosts that no longer forward (replies.untrack_tunnel).")


def _hex(value: int) -> str:
    return f"0x{value:08x}"


def _setup_lines() -> list[str]:
    keep, direct = _hex(0xFFFFFFFF ^ MARK_MASK), _hex(mark_of(DIRECT_ID))
    return [
        f"add table {FAMILY} {TABLE}",
        f"add chain {FAMILY} {TABLE} {CHAIN} {{ type filter hook prerouting priority mangle; policy accept; }}",
        f"add rule {FAMILY} {TABLE} {CHAIN} ip saddr {addressing.SERVICE_RANGE} ct direction reply "
        f"ct status dnat ct mark and {_hex(MARK_MASK)} == 0 counter meta mark set meta mark and {keep} "
        f"or {direct} comment \"{DIRECT_COMMENT}\"",
    ]


def _tunnel_lines(ifname: str, mark_id: int) -> list[str]:
    mask, keep, mark = _hex(MARK_MASK), _hex(0xFFFFFFFF ^ MARK_MASK), _hex(mark_of(mark_id))
    return [
        f"add rule {FAMILY} {TABLE} {CHAIN} iifname \"{ifname}\" ct direction original "
        f"ct mark and {mask} == 0 counter ct mark set ct mark and {keep} or {mark} "
        f"comment \"ingress tunnel={ifname} id={mark_id}\"",
        f"add rule {FAMILY} {TABLE} {CHAIN} ip saddr {addressing.SERVICE_RANGE} ct direction reply "
        f"ct mark and {mask} == {mark} counter meta mark set meta mark and {keep} or {mark} "
        f"comment \"reply tunnel={ifname} id={mark_id}\"",
    ]


def _fwmark_rules(ipr, mark_id: int) -> list:
    return [r for r in ipr.get_rules(family=2)
            if r.get("priority") == RULE_PRIORITY and r.get("fwmark") == mark_of(mark_id)
            and r.get("fwmask") == MARK_MASK]


def _ensure_rule(ipr, mark_id: int, table: int) -> None:
    if not _fwmark_rules(ipr, mark_id):
        ipr.rule("add", fwmark=mark_of(mark_id), fwmask=MARK_MASK, table=table, priority=RULE_PRIORITY)


def _delete_rules(ipr, mark_id: int) -> bool:
    rules = _fwmark_rules(ipr, mark_id)
    for rule in rules:
        ipr.rule("del", fwmark=mark_of(mark_id), fwmask=MARK_MASK, table=rule.get("table"),
                 priority=RULE_PRIORITY)
    return bool(rules)


def _check_ifname(ifname: str) -> None:
    if not isinstance(ifname, str) or not re.match(r"^[A-Za-z0-9_.-]{1,15}$", ifname):
        raise errors.NetworkError(f"{ifname!r} is not an interface name.",
                                  hint="Pass the tunnel's name, e.g. wireguard.interface_name(local, peer).")


@_ns.one_at_a_time(_changes)
def track_tunnel(netns: str | None, tunnel_ifname: str) -> int:
    """Answer connections arriving through ``tunnel_ifname`` through it; returns its mark id.

    Idempotent: a tracked tunnel keeps its id, and its route and rule are put back if the
    interface was recreated meanwhile. Sets rp_filter 0 (all and the tunnel), ip_forward 1 and
    nf_conntrack_tcp_loose 1 (mid-stream pick-up, the kernel default)."""
    _check_ifname(tunnel_ifname)
    with _ns.iproute(netns, f"looking up {tunnel_ifname}") as ipr:
        index = _ns.link_index(ipr, tunnel_ifname)
    if index is None:
        raise errors.NetworkError(f"There is no interface {tunnel_ifname} in {_ns.describe(netns)}.",
                                  hint="Bring the tunnel up first (wireguard.up).")
    tracked = {t.ifname: t.mark_id for t in list_tracked(netns)}
    mark_id = tracked.get(tunnel_ifname)
    if mark_id is None:
        mark_id = _allocate(tunnel_ifname, set(tracked.values()))
        lines = (_setup_lines() if not tracked else []) + _tunnel_lines(tunnel_ifname, mark_id)
        _ns.nft(netns, ["-f", "-"], f"tracking connections from {tunnel_ifname}", "\n".join(lines) + "\n")
    table = REPLY_TABLE_BASE + mark_id
    with _ns.iproute(netns, f"routing replies into {tunnel_ifname}") as ipr:
        ipr.route("replace", dst="0.0.0.0/0", oif=index, table=table)
        _ensure_rule(ipr, mark_id, table)
        _ensure_rule(ipr, DIRECT_ID, MAIN_TABLE)
    _ns.sysctl(netns, {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0",
                       f"net.ipv4.conf.{tunnel_ifname}.rp_filter": "0",
                       "net.netfilter.nf_conntrack_tcp_loose": "1"})
    log.info("%s answers connections from %s through it (mark id %d, table %d)",
             _ns.describe(netns), tunnel_ifname, mark_id, table)
    return mark_id


def _flush_table(ipr, table: int) -> bool:
    routes = ipr.get_routes(family=2, table=table)
    for route in routes:
        ipr.route("del", dst=f"{route.get('dst') or '0.0.0.0'}/{route['dst_len']}",
                  oif=route.get("oif"), table=table)
    return bool(routes)


@_ns.one_at_a_time(_changes)
def untrack_tunnel(netns: str | None, tunnel_ifname: str) -> bool:
    """Undo ``track_tunnel`` (False if it was not tracked); the last one removes the table."""
    _check_ifname(tunnel_ifname)
    rules = _ns.nft_rules(netns, FAMILY, TABLE)
    doomed = [r for r in rules if (m := _COMMENT_RE.match(r.get("comment", ""))) and m.group(2) == tunnel_ifname]
    mark_ids = {int(_COMMENT_RE.match(r["comment"]).group(3)) for r in doomed}
    others = {t.ifname for t in list_tracked(netns)} - {tunnel_ifname}
    if doomed and not others:
        _ns.nft(netns, ["delete", "table", FAMILY, TABLE], f"deleting table {FAMILY} {TABLE}")
    elif doomed:
        _ns.nft(netns, ["-f", "-"], f"untracking {tunnel_ifname}",
             "".join(f"delete rule {FAMILY} {TABLE} {CHAIN} handle {r['handle']}\n" for r in doomed))
    removed = bool(doomed)
    with _ns.iproute(netns, f"removing the reply path into {tunnel_ifname}") as ipr:
        for mark_id in mark_ids:
            removed = _delete_rules(ipr, mark_id) | _flush_table(ipr, REPLY_TABLE_BASE + mark_id) | removed
        if not others:
            removed = _delete_rules(ipr, DIRECT_ID) or removed
    if removed:
        log.info("%s no longer tracks connections from %s", _ns.describe(netns), tunnel_ifname)
    return removed


@_ns.one_at_a_time(_changes)
def remove_all(netns: str | None) -> bool:
    """Remove the table, every fwmark rule of ours and their routes (False if none was there)."""
    removed = False
    if _ns.nft_table_exists(netns, FAMILY, TABLE):
        _ns.nft(netns, ["delete", "table", FAMILY, TABLE], f"deleting table {FAMILY} {TABLE}")
        removed = True
    with _ns.iproute(netns, "removing reply paths") as ipr:
        for rule in ipr.get_rules(family=2):
            if rule.get("priority") == RULE_PRIORITY and rule.get("fwmask") == MARK_MASK:
                mark_id = (rule.get("fwmark") or 0) >> MARK_SHIFT
                removed = _delete_rules(ipr, mark_id) or removed
                if mark_id != DIRECT_ID:
                    removed = _flush_table(ipr, REPLY_TABLE_BASE + mark_id) or removed
    return removed
