"""The endpoint proxy: a host's published ports, DNATed to container service IPs (nftables).

    from cloudmig.network import proxy
    proxy.publish("h1", "198.18.250.11", 8080, "100.96.0.5", 80, "tcp", owner="web")
    for fwd in proxy.list_forwards("h1"):
        print(fwd.owner, fwd.public_ip, fwd.host_port, "->", fwd.service_ip, fwd.container_port)
    proxy.unpublish("h1", owner="web")        # or host_port=8080; proxy.remove_all("h1")

All rules live in one table, ``ip cloudmig``: chain ``prerouting`` catches clients from
outside, chain ``output`` connections made on the host itself. Each rule's comment names its
owner (a container), which is how forwards are listed and removed. The same rules keep
working after the container moved: the service IP is then routed into the tunnel
(``routing.route_service``) and A's conntrack un-NATs the replies that come back through it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import threading

from cloudmig import errors
from cloudmig.network import _ns

__all__ = ["TABLE", "Forward", "publish", "list_forwards", "unpublish", "remove_all"]

log = logging.getLogger(__name__)
_changes = threading.RLock()        # see _ns.one_at_a_time

FAMILY, TABLE = "ip", "cloudmig"
CHAINS = {"prerouting": ("prerouting", "dstnat"), "output": ("output", -100)}
PROTOCOLS = ("tcp", "udp")
OWNER_PREFIX = "owner="


@dataclasses.dataclass(frozen=True)
class Forward:
    owner: str
    proto: str
    public_ip: str
    host_port: int
    service_ip: str
    container_port: int


def _nft(netns: str | None, argv: list[str], doing: str, script: str | None = None) -> str:
    return _ns.nft(netns, argv, doing, script)


def _table_exists(netns: str | None) -> bool:
    return _ns.nft_table_exists(netns, FAMILY, TABLE)


def _rules(netns: str | None) -> list[dict]:
    return _ns.nft_rules(netns, FAMILY, TABLE)


def _parse(rule: dict) -> Forward | None:
    comment = rule.get("comment", "")
    if not comment.startswith(OWNER_PREFIX):
        return None
    public_ip = proto = port = dnat = None
    for expr in rule.get("expr", []):
        match = expr.get("match")
        if match and "payload" in match.get("left", {}):
            payload = match["left"]["payload"]
            if payload.get("field") == "daddr":
                public_ip = match["right"]
            elif payload.get("field") == "dport":
                proto, port = payload["protocol"], match["right"]
        if "dnat" in expr:
            dnat = expr["dnat"]
    if None in (public_ip, proto, port, dnat):
        return None
    return Forward(owner=comment[len(OWNER_PREFIX):], proto=proto, public_ip=public_ip,
                   host_port=int(port), service_ip=dnat["addr"], container_port=int(dnat["port"]))


def list_forwards(netns: str | None) -> list[Forward]:
    """The published ports of ``netns`` (one Forward per port, from chain prerouting)."""
    return [fwd for rule in _rules(netns) if rule["chain"] == "prerouting"
            for fwd in [_parse(rule)] if fwd]


def _check(public_ip: str, host_port: int, service_ip: str, container_port: int, proto: str,
           owner: str) -> None:
    try:
        ipaddress.IPv4Address(public_ip)
        ipaddress.IPv4Address(service_ip)
    except ValueError as exc:
        raise errors.NetworkError(f"Bad address for a published port: {exc}.",
                                  hint="Give IPv4 addresses, e.g. 198.18.250.11 and 100.96.0.5.") from exc
    for port in (host_port, container_port):
        if not isinstance(port, int) or not 0 < port < 65536:
            raise errors.NetworkError(f"{port!r} is not a port number.", hint="Use 1-65535.")
    if proto not in PROTOCOLS:
        raise errors.NetworkError(f"Protocol {proto!r} cannot be published.", hint="Use tcp or udp.")
    if not owner or '"' in owner or "\\" in owner or len(owner) > 100:
        raise errors.NetworkError(f"Owner {owner!r} cannot name a forward.",
                                  hint="Use the container's name (no quotes, at most 100 characters).")


@_ns.one_at_a_time(_changes)
def publish(netns: str | None, public_ip: str, host_port: int, service_ip: str,
            container_port: int, proto: str = "tcp", *, owner: str) -> Forward:
    """DNAT PUBLIC_IP:HOST_PORT to SERVICE_IP:CONTAINER_PORT (idempotent for the same target)."""
    _check(public_ip, host_port, service_ip, container_port, proto, owner)
    wanted = Forward(owner, proto, public_ip, host_port, service_ip, container_port)
    for fwd in list_forwards(netns):
        if (fwd.public_ip, fwd.host_port, fwd.proto) == (public_ip, host_port, proto):
            if fwd == wanted:
                return fwd
            raise errors.NetworkError(
                f"{proto} {public_ip}:{host_port} is already published for {fwd.owner} "
                f"(to {fwd.service_ip}:{fwd.container_port}).",
                hint=f"Unpublish it first (proxy.unpublish(netns, owner={fwd.owner!r})) or use another port.")
    lines = [f"add table {FAMILY} {TABLE}"]
    for chain, (hook, prio) in CHAINS.items():
        lines.append(f"add chain {FAMILY} {TABLE} {chain} "
                     f"{{ type nat hook {hook} priority {prio}; policy accept; }}")
        lines.append(f"add rule {FAMILY} {TABLE} {chain} ip daddr {public_ip} {proto} dport {host_port} "
                     f"dnat to {service_ip}:{container_port} comment \"{OWNER_PREFIX}{owner}\"")
    _nft(netns, ["-f", "-"], f"publishing {proto} {public_ip}:{host_port}", "\n".join(lines) + "\n")
    log.info("%s publishes %s %s:%d -> %s:%d for %s", _ns.describe(netns), proto, public_ip,
             host_port, service_ip, container_port, owner)
    return wanted


@_ns.one_at_a_time(_changes)
def unpublish(netns: str | None, *, owner: str | None = None, host_port: int | None = None,
              proto: str | None = None) -> list[Forward]:
    """Remove the forwards matching every given filter; returns what was removed."""
    if owner is None and host_port is None:
        raise errors.NetworkError("unpublish needs an owner or a host port.",
                                  hint="Use proxy.remove_all(netns) to remove every forward.")
    doomed, removed = [], []
    for rule in _rules(netns):
        fwd = _parse(rule)
        if fwd and (owner is None or fwd.owner == owner) and \
                (host_port is None or fwd.host_port == host_port) and (proto is None or fwd.proto == proto):
            doomed.append(f"delete rule {FAMILY} {TABLE} {rule['chain']} handle {rule['handle']}")
            if rule["chain"] == "prerouting":
                removed.append(fwd)
    if doomed:
        _nft(netns, ["-f", "-"], "unpublishing ports", "\n".join(doomed) + "\n")
        log.info("%s unpublished %d forwards", _ns.describe(netns), len(removed))
    return removed


@_ns.one_at_a_time(_changes)
def remove_all(netns: str | None) -> bool:
    """Delete the whole ``ip cloudmig`` table (False if there was none)."""
    if not _table_exists(netns):
        return False
    _nft(netns, ["delete", "table", FAMILY, TABLE], f"deleting table {FAMILY} {TABLE}")
    return True
