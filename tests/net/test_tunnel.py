"""Tunnel lifecycle between two lab hosts, and the errors bad input gets."""

from __future__ import annotations

import socket
import struct

import pytest

from cloudmig import errors
from cloudmig.network import keys, proxy, routing, wireguard

from netlab import Tunnel, leftovers, netns_socket

TCPI_SND_CWND = 80        # offset of tcpi_snd_cwnd in struct tcp_info (linux/tcp.h)


def test_up_warm_status_down(lab):
    ta, tb = lab.tunnel_pair()
    st = wireguard.status(ta.ifname, ta.netns)
    assert st.backend == wireguard.backend() and st.public_key == ta.public_key
    assert st.listen_port == ta.port
    peer = st.peer(tb.public_key)
    assert peer.endpoint == f"{lab.hosts['b'].public_ip}:{tb.port}"
    assert peer.allowed_ips == (f"{tb.overlay_ip}/32",)
    assert peer.latest_handshake > 0 and peer.tx_bytes > 0 and peer.rx_bytes > 0
    assert "private" not in repr(st).lower()

    # a new TCP connection through the tunnel starts with the tunnel's initial window, not
    # Linux's 10 segments (a freeze's images cross in one round trip, not five)
    with netns_socket(tb.netns) as server, netns_socket(ta.netns) as client:
        server.bind((tb.overlay_ip, 0))
        server.listen(1)
        client.connect((tb.overlay_ip, server.getsockname()[1]))
        info = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        assert struct.unpack_from("I", info, TCPI_SND_CWND)[0] == wireguard.INITIAL_WINDOW

    wireguard.add_allowed_ip(ta.ifname, ta.netns, tb.public_key, "100.96.0.7/32")
    wireguard.add_allowed_ip(ta.ifname, ta.netns, tb.public_key, "100.96.0.7/32")   # idempotent
    assert wireguard.status(ta.ifname, ta.netns).peer(tb.public_key).allowed_ips == (
        f"{tb.overlay_ip}/32", "100.96.0.7/32")
    wireguard.remove_allowed_ip(ta.ifname, ta.netns, tb.public_key, "100.96.0.7/32")
    assert wireguard.status(ta.ifname, ta.netns).peer(tb.public_key).allowed_ips == (
        f"{tb.overlay_ip}/32",)

    third, nobody = keys.public_key(keys.generate()), f"{lab.subnet[99]}:51820"   # stays on the lab bridge
    wireguard.set_peer(ta.ifname, ta.netns, wireguard.Peer(third, nobody, ["100.64.0.99/32"], 25))
    peer = wireguard.status(ta.ifname, ta.netns).peer(third)
    assert (peer.endpoint, peer.allowed_ips, peer.persistent_keepalive) == (
        nobody, ("100.64.0.99/32",), 25)
    with pytest.raises(errors.NetworkError, match="share the endpoint"):
        wireguard.set_peer(ta.ifname, ta.netns, wireguard.Peer(keys.public_key(keys.generate()),
                                                               nobody))
    with pytest.raises(errors.NetworkError, match="no prefix length"):
        wireguard.add_allowed_ip(ta.ifname, ta.netns, third, "100.96.0.7")
    wireguard.remove_peer(ta.ifname, ta.netns, third)
    assert wireguard.status(ta.ifname, ta.netns).peer(third) is None

    for tun in (ta, tb):
        assert wireguard.down(tun.ifname, tun.netns, tun.key_file)
        assert not wireguard.down(tun.ifname, tun.netns, tun.key_file)   # idempotent
    assert leftovers(lab) == []


def test_bad_input_gets_errors_that_name_the_fix(lab):
    a, b = lab.hosts["a"], lab.hosts["b"]
    with pytest.raises(errors.NetworkError, match="two different hosts"):
        wireguard.interface_name(a.netns, a.netns)
    name = wireguard.interface_name(a.netns, b.netns)
    key_file = keys.default_path(name)
    other = keys.public_key(keys.generate())
    with pytest.raises(errors.NetworkError, match=r"does not exist.*cloudmig lab up"):
        wireguard.up(name, lab.prefix + "nosuch", key_file, 51820, "100.64.0.1/32")
    with pytest.raises(errors.NetworkError, match="Create it with keys.create"):
        wireguard.up(name, a.netns, key_file, 51820, "100.64.0.1/32")
    keys.create(key_file)
    same = f"{b.public_ip}:51820"
    with pytest.raises(errors.NetworkError, match="share the endpoint.*one interface per host pair"):
        wireguard.up(name, a.netns, key_file, 51820, "100.64.0.1/32",
                     peers=[wireguard.Peer(other, same),
                            wireguard.Peer(keys.public_key(keys.generate()), same)])
    with pytest.raises(errors.NetworkError, match="not IP:PORT"):
        wireguard.up(name, a.netns, key_file, 51820, "100.64.0.1/32", peers=[wireguard.Peer(other, "b:1")])
    assert not wireguard.is_up(name, a.netns)        # refused before anything changed

    lab.tunnels.append(Tunnel(a.netns, name, key_file, "", "100.64.0.1", 51820))
    wireguard.up(name, a.netns, key_file, 51820, "100.64.0.1/32", peers=[wireguard.Peer(other, same)])
    with pytest.raises(errors.NetworkError, match=r"already up.*down\("):
        wireguard.up(name, a.netns, key_file, 51820, "100.64.0.1/32")
    with pytest.raises(errors.NetworkError, match="already up"):     # names are per machine
        wireguard.up(name, b.netns, key_file, 51821, "100.64.0.9/32")
    with pytest.raises(errors.NetworkError, match="No peer of .* carries"):
        wireguard.warm(name, a.netns, "100.64.9.9")
    with pytest.raises(errors.NetworkError, match="not up.*wireguard.up"):
        wireguard.status(wireguard.interface_name(b.netns, a.netns), b.netns)
    with pytest.raises(errors.NetworkError, match="does not exist"):
        routing.create_container_netns(lab.prefix + "nosuch", lab.prefix + "c9", "100.96.0.9")
    with pytest.raises(errors.NetworkError, match="not a container service IP"):
        routing.create_container_netns(a.netns, lab.prefix + "c9", "10.0.0.1")
    with pytest.raises(errors.NetworkError, match="does not exist"):
        proxy.list_forwards(lab.prefix + "nosuch")
    with pytest.raises(errors.NetworkError, match="no interface .* Bring the tunnel"):
        routing.route_service(a.netns, "100.96.0.9", "nosuch0")
    proxy.publish(a.netns, a.public_ip, 8080, "100.96.0.9", 80, owner="web")
    assert proxy.publish(a.netns, a.public_ip, 8080, "100.96.0.9", 80, owner="web")   # idempotent
    with pytest.raises(errors.NetworkError, match="already published for web.*Unpublish it first"):
        proxy.publish(a.netns, a.public_ip, 8080, "100.96.0.10", 80, owner="db")
    assert [f.owner for f in proxy.unpublish(a.netns, host_port=8080)] == ["web"]
    assert proxy.list_forwards(a.netns) == [] and proxy.remove_all(a.netns)
