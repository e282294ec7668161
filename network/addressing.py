"""Overlay addresses in 100.64.0.0/10 (shared address space, unlikely to clash with VPCs).

    from cloudmig.network import addressing
    addressing.host_address({"100.64.0.1"})          # IPv4Address('100.64.0.2')
    addressing.service_ip(set())                     # IPv4Address('100.96.0.1')
    addressing.route_table("100.96.0.1")             # 1000001: policy table for its reply path

Pure functions: the caller passes the addresses already in use (from its inventory) and gets
the lowest free one. Host tunnel addresses are /32s in 100.64.0.0/16; container service IPs
are /32s in 100.96.0.0/11. The network and broadcast addresses of each range are never given.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from cloudmig import errors

OVERLAY = ipaddress.IPv4Network("100.64.0.0/10")
HOST_RANGE = ipaddress.IPv4Network("100.64.0.0/16")
SERVICE_RANGE = ipaddress.IPv4Network("100.96.0.0/11")
# Policy-routing tables for service IPs: base + the IP's offset in SERVICE_RANGE. Above the
# reserved ids (253-255) and far from the small numbers people pick by hand.
ROUTE_TABLE_BASE = 1_000_000
WIREGUARD_PORT_BASE = 51820
PORT_MAX = 65535

IPv4 = ipaddress.IPv4Address


def _parse(value: str | IPv4, what: str) -> IPv4:
    try:
        return ipaddress.IPv4Address(str(value).split("/")[0])
    except ValueError as exc:
        raise errors.NetworkError(f"{value!r} is not an IPv4 address ({what}).",
                                  hint="Pass addresses like 100.64.0.1.") from exc


def _lowest_free(network: ipaddress.IPv4Network, used: Iterable[str | IPv4], what: str) -> IPv4:
    taken = {_parse(u, f"used {what}") for u in used}
    for candidate in network.hosts():
        if candidate not in taken:
            return candidate
    raise errors.NetworkError(f"No free {what} left in {network}.",
                              hint="Remove unused hosts or containers first.")


def host_address(used: Iterable[str | IPv4]) -> IPv4:
    """The lowest free tunnel address (a /32 per host) in HOST_RANGE."""
    return _lowest_free(HOST_RANGE, used, "host tunnel address")


def service_ip(used: Iterable[str | IPv4]) -> IPv4:
    """The lowest free container service IP (a /32 per container) in SERVICE_RANGE."""
    return _lowest_free(SERVICE_RANGE, used, "container service IP")


def require_in(value: str | IPv4, network: ipaddress.IPv4Network, what: str) -> IPv4:
    """``value`` as an address, or NetworkError if it lies outside ``network``."""
    addr = _parse(value, what)
    if addr not in network:
        raise errors.NetworkError(f"{addr} is not a {what}: those live in {network}.",
                                  hint="Allocate it with cloudmig.network.addressing.")
    return addr


def route_table(service: str | IPv4) -> int:
    """The policy-routing table that carries the reply path of ``service`` (unique per IP)."""
    addr = require_in(service, SERVICE_RANGE, "container service IP")
    return ROUTE_TABLE_BASE + int(addr) - int(SERVICE_RANGE.network_address)


def wireguard_port(used: Iterable[int]) -> int:
    """The lowest free UDP port from 51820 up (one WireGuard interface per host pair)."""
    taken = set(used)
    for port in range(WIREGUARD_PORT_BASE, PORT_MAX + 1):
        if port not in taken:
            return port
    raise errors.NetworkError("No free UDP port for WireGuard.", hint="Remove unused tunnels.")
