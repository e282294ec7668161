"""Overlay allocation: pure functions, no root needed."""

from __future__ import annotations

import ipaddress

import pytest

from cloudmig import errors
from cloudmig.network import addressing


def test_host_addresses_are_lowest_free_in_host_range():
    assert str(addressing.host_address(set())) == "100.64.0.1"
    assert str(addressing.host_address({"100.64.0.1", "100.64.0.2/32"})) == "100.64.0.3"
    assert str(addressing.host_address({"100.64.0.2"})) == "100.64.0.1"


def test_service_ips_never_collide_with_used_or_host_range():
    used: set[str] = set()
    for _ in range(300):
        ip = addressing.service_ip(used)
        assert ip in addressing.SERVICE_RANGE and str(ip) not in used
        used.add(str(ip))
    assert not addressing.SERVICE_RANGE.overlaps(addressing.HOST_RANGE)
    assert addressing.SERVICE_RANGE.subnet_of(addressing.OVERLAY)
    assert addressing.HOST_RANGE.subnet_of(addressing.OVERLAY)


def test_exhausted_range_is_a_clear_error():
    small = ipaddress.IPv4Network("100.64.0.0/30")
    with pytest.raises(errors.NetworkError, match="No free .* left"):
        addressing._lowest_free(small, {"100.64.0.1", "100.64.0.2"}, "thing")


def test_route_tables_are_unique_and_above_reserved():
    tables = {addressing.route_table(f"100.96.0.{i}") for i in range(1, 200)}
    assert len(tables) == 199 and min(tables) > 255
    assert addressing.route_table("100.127.255.254") < 2**32


def test_bad_input():
    with pytest.raises(errors.NetworkError, match="not a container service IP"):
        addressing.route_table("100.64.0.1")
    with pytest.raises(errors.NetworkError, match="not an IPv4 address"):
        addressing.service_ip({"not-an-ip"})


def test_wireguard_port():
    assert addressing.wireguard_port([]) == 51820
    assert addressing.wireguard_port([51820, 51821]) == 51822
