"""Container network namespaces and the routes that move a service IP between hosts.

    from cloudmig.network import replies, routing
    link = routing.create_container_netns("h1", "web-ns", "100.96.0.5")   # veth + routes
    # migrate web to h2: h2 prepares the same service IP, then
    routing.create_container_netns("h2", "web-ns2", "100.96.0.5")
    replies.track_tunnel("h2", tunnel_h2_to_h1)               # replies go back through h1
    routing.return_via("h2", "100.96.0.5", tunnel_h2_to_h1)   # fallback: see return_via
    routing.route_service("h1", "100.96.0.5", tunnel_h1_to_h2) # h1 sends it into the tunnel
    # undo on failure: route_service("h1", ip, link.host_veth); remove_return_via("h2", ip)
    # (the tunnel stays tracked while it is up: replies.untrack_tunnel when it goes down)
    routing.delete_container_netns("h1", "web-ns")

A container's uplink is a veth pair: the host side carries 169.254.1.1/32 with proxy_arp, the
container side (eth0) the service IP /32 and ``default via 169.254.1.1 onlink``; the host
routes ``SERVICE_IP/32 dev <host veth>``. Everything goes through pyroute2 netlink; only
sysctls use a helper process. All operations are idempotent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os

from pyroute2 import netns as pyroute2_netns

from cloudmig import errors
from cloudmig.network import _ns, addressing

__all__ = ["GATEWAY", "RULE_PRIORITY", "ContainerLink", "host_veth_name", "create_container_netns",
           "delete_container_netns", "route_service", "unroute_service", "return_via",
           "remove_return_via"]

log = logging.getLogger(__name__)

GATEWAY = "169.254.1.1"            # the container's next hop: the host side of its veth
CONTAINER_IFNAME = "eth0"
RULE_PRIORITY = 1000               # before the main table's rule (32766)
RTNH_F_ONLINK = 4
MAIN_TABLE = 254


@dataclasses.dataclass(frozen=True)
class ContainerLink:
    host_netns: str | None
    container_netns: str
    service_ip: str
    host_veth: str
    container_ifname: str = CONTAINER_IFNAME


def host_veth_name(container_netns: str) -> str:
    """The host side of a container's veth: unique per container namespace, <= 15 chars."""
    return "cv" + hashlib.sha256(container_netns.encode()).hexdigest()[:10]


def _service(service_ip: str) -> str:
    return str(addressing.require_in(service_ip, addressing.SERVICE_RANGE, "container service IP"))


# Riding out a WAN outage (docs/network.md, "When the WAN breaks"): TCP's retransmission
# back-off is capped at 1 s (net.ipv4.tcp_rto_max_ms, Linux >= 6.15), so a connection sends
# again within 1 s of the link's return instead of up to two minutes later (measured: a 30 s
# outage stalled a connection 55 s with the default cap, 60 s one stalled it 60.0 s with 1 s);
# tcp_retries2 at its maximum (255) keeps connections alive through ~4 min of outage under
# that cap (with the default 15 they would time out after ~15 s of it). Set in the host's
# namespace (the agents' transfers, CRIU's page server and lazy-pages daemon) and in each
# container's (its clients' connections).
RIDE_OUT_SYSCTLS = {"net.ipv4.tcp_rto_max_ms": "1000", "net.ipv4.tcp_retries2": "255"}


def ride_out_sysctls() -> dict[str, str]:
    """RIDE_OUT_SYSCTLS, without the RTO cap on kernels that lack it (< 6.15), where raising
    tcp_retries2 alone would only keep dead peers longer: then nothing."""
    return RIDE_OUT_SYSCTLS if os.path.exists("/proc/sys/net/ipv4/tcp_rto_max_ms") else {}


def _host_sysctls(netns: str | None, host_veth: str) -> None:
    _ns.sysctl(netns, {
        **ride_out_sysctls(),
        "net.ipv4.ip_forward": "1",
        # replies through the tunnel arrive with the client's source address: no reverse-path check
        "net.ipv4.conf.all.rp_filter": "0",
        "net.ipv4.conf.default.rp_filter": "0",
        f"net.ipv4.conf.{host_veth}.rp_filter": "0",
        f"net.ipv4.conf.{host_veth}.proxy_arp": "1",
    })


def create_container_netns(netns: str | None, container_netns: str, service_ip: str,
                           host_veth: str | None = None, route: bool = True) -> ContainerLink:
    """Create /run/netns/CONTAINER_NETNS wired to ``netns``; nothing is left on failure.
    Without ``route`` the host's route for the service IP is left as it is (a forwarder's
    route into a tunnel: the new namespace has no socket yet, and would answer its
    connections with resets); ``route_service`` points it at the veth later."""
    service = _service(service_ip)
    host_veth = host_veth or host_veth_name(container_netns)
    link = ContainerLink(netns, container_netns, service, host_veth)
    if netns is not None:
        _ns.netns_path(netns)
    if _ns.exists(container_netns):
        if _is_wired(link):
            return link
        raise errors.NetworkError(
            f"Network namespace {container_netns!r} already exists but is not wired for {service}.",
            hint="Delete it with routing.delete_container_netns() or pick another name.")
    pyroute2_netns.create(container_netns)
    try:
        with _ns.iproute(netns, f"creating the veth {host_veth}") as ipr:
            ipr.link("add", ifname=host_veth, kind="veth",
                     peer={"ifname": CONTAINER_IFNAME, "net_ns_fd": container_netns})
            index = ipr.link_lookup(ifname=host_veth)[0]
            ipr.addr("add", index=index, address=GATEWAY, prefixlen=32)
            ipr.link("set", index=index, state="up")
            if route:
                ipr.route("replace", dst=f"{service}/32", oif=index)
        _host_sysctls(netns, host_veth)
        with _ns.iproute(container_netns, f"addressing {service} in the container") as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            index = ipr.link_lookup(ifname=CONTAINER_IFNAME)[0]
            ipr.addr("add", index=index, address=service, prefixlen=32)
            ipr.link("set", index=index, state="up")
            ipr.route("replace", dst="0.0.0.0/0", gateway=GATEWAY, oif=index, flags=RTNH_F_ONLINK)
        if ride_out_sysctls():
            _ns.sysctl(container_netns, ride_out_sysctls())
    except BaseException:
        delete_container_netns(netns, container_netns, host_veth)
        raise
    log.info("container netns %s wired to %s with %s", container_netns, _ns.describe(netns), service)
    return link


def _is_wired(link: ContainerLink) -> bool:
    with _ns.iproute(link.container_netns, "inspecting the container namespace") as ipr:
        has_ip = bool(ipr.get_addr(address=link.service_ip))
    with _ns.iproute(link.host_netns, "inspecting the host namespace") as ipr:
        return has_ip and _ns.link_index(ipr, link.host_veth) is not None


def delete_container_netns(netns: str | None, container_netns: str,
                           host_veth: str | None = None) -> bool:
    """Remove the veth (and with it the service route) and the namespace; False if absent."""
    host_veth = host_veth or host_veth_name(container_netns)
    removed = False
    if _ns.exists(netns):
        with _ns.iproute(netns, f"deleting the veth {host_veth}") as ipr:
            index = _ns.link_index(ipr, host_veth)
            if index is not None:
                ipr.link("del", index=index)
                removed = True
    if _ns.exists(container_netns):
        pyroute2_netns.remove(container_netns)
        removed = True
    if removed:
        log.info("container netns %s removed", container_netns)
    return removed


def _index(ipr, ifname: str) -> int:
    index = _ns.link_index(ipr, ifname)
    if index is None:
        raise errors.NetworkError(f"There is no interface {ifname}.",
                                  hint="Bring the tunnel or container up first.")
    return index


def route_service(netns: str | None, service_ip: str, ifname: str) -> None:
    """``route replace SERVICE_IP/32 dev IFNAME``: the tunnel on the source after a move, the
    host veth to undo it."""
    service = _service(service_ip)
    with _ns.iproute(netns, f"routing {service} to {ifname}") as ipr:
        ipr.route("replace", dst=f"{service}/32", oif=_index(ipr, ifname))
    log.info("%s routes %s via %s", _ns.describe(netns), service, ifname)


def unroute_service(netns: str | None, service_ip: str) -> bool:
    """Delete ``SERVICE_IP/32`` from the main table (False if there was none)."""
    service = _service(service_ip)
    with _ns.iproute(netns, f"unrouting {service}") as ipr:
        found = ipr.get_routes(dst=service, dst_len=32, table=MAIN_TABLE)
        for route in found:
            ipr.route("del", dst=f"{service}/32", oif=route.get("oif"), table=MAIN_TABLE)
        return bool(found)


def _rules_from(ipr, service: str, table: int) -> list:
    return [r for r in ipr.get_rules(family=2)
            if r.get("src") == service and r.get("src_len") == 32 and r.get("table") == table]


def return_via(netns: str | None, service_ip: str, tunnel_ifname: str) -> int:
    """On the destination: packets from SERVICE_IP leave through ``tunnel_ifname`` (back to the
    source, whose conntrack un-NATs them): ``rule from SERVICE_IP lookup T``, ``default dev
    TUNNEL table T``. Returns T.

    This sends *every* unmarked packet of the service IP into one tunnel: right only while a
    single forwarder exists and this host publishes none of the service's ports. In general
    call ``replies.track_tunnel`` for each tunnel a forwarder uses (each connection is answered
    through the tunnel it came in from; this host's own DNATed connections are pinned to the
    main table), and keep ``return_via`` towards the host the container just left only as the
    fallback for connections no tunnel has marked: those whose first packet this host sees
    comes from the container (e.g. a retransmission of a restored socket). Its catch-all also
    takes connections the container opens itself (outbound), so remove it once the
    connections restored from that host are gone."""
    service = _service(service_ip)
    table = addressing.route_table(service)
    with _ns.iproute(netns, f"routing replies of {service} into {tunnel_ifname}") as ipr:
        ipr.route("replace", dst="0.0.0.0/0", oif=_index(ipr, tunnel_ifname), table=table)
        if not _rules_from(ipr, service, table):
            ipr.rule("add", src=service, src_len=32, table=table, priority=RULE_PRIORITY)
    _ns.sysctl(netns, {"net.ipv4.conf.all.rp_filter": "0",
                       f"net.ipv4.conf.{tunnel_ifname}.rp_filter": "0"})
    log.info("%s returns replies of %s through %s (table %d)", _ns.describe(netns), service,
             tunnel_ifname, table)
    return table


def remove_return_via(netns: str | None, service_ip: str) -> bool:
    """Undo ``return_via``: the rule and table T's routes go (False if nothing was there)."""
    service = _service(service_ip)
    table = addressing.route_table(service)
    with _ns.iproute(netns, f"removing the reply path of {service}") as ipr:
        rules = _rules_from(ipr, service, table)
        for rule in rules:
            ipr.rule("del", src=service, src_len=32, table=table, priority=rule.get("priority"))
        routes = ipr.get_routes(family=2, table=table)
        for route in routes:
            ipr.route("del", dst=f"{route.get('dst') or '0.0.0.0'}/{route['dst_len']}",
                      oif=route.get("oif"), table=table)
        return bool(rules or routes)
