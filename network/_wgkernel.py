"""The kernel WireGuard backend: rtnetlink for the link, pyroute2's WireGuard (genetlink) for keys.

    from cloudmig.network import _wgkernel
    _wgkernel.create("cm0a1b2c3d4e", "h1")                    # ip link add ... type wireguard
    _wgkernel.configure("cm0a1b2c3d4e", "h1", private_key="base64...", listen_port=51820, peers=[])
    _wgkernel.destroy("cm0a1b2c3d4e", "h1")

Used only when /sys/module/wireguard exists (this project's lab machines have no module, so
wireguard-go serves there; see docs/network.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pyroute2 import WireGuard
from pyroute2.netlink.exceptions import NetlinkError

from cloudmig.network import _ns
from cloudmig.network._wgtypes import PeerStatus, PeerUpdate


@contextlib.contextmanager
def _genl(name: str, netns: str | None, doing: str) -> Iterator[WireGuard]:
    if netns is not None:
        _ns.netns_path(netns)
    wg = WireGuard(netns=netns, flags=0) if netns else WireGuard()
    try:
        yield wg
    except NetlinkError as exc:
        raise _ns.netlink_error(exc, f"{doing} WireGuard interface {name}", netns) from exc
    finally:
        wg.close()


def create(name: str, netns: str | None) -> None:
    with _ns.iproute(netns, f"creating WireGuard interface {name}") as ipr:
        ipr.link("add", ifname=name, kind="wireguard")


def destroy(name: str, netns: str | None) -> bool:
    with _ns.iproute(netns, f"deleting WireGuard interface {name}") as ipr:
        index = _ns.link_index(ipr, name)
        if index is None:
            return False
        ipr.link("del", index=index)
        return True


def configure(name: str, netns: str | None, private_key: str | None, listen_port: int | None,
              peers: list[PeerUpdate]) -> None:
    with _genl(name, netns, "configuring") as wg:
        if private_key is not None or listen_port is not None:
            wg.set(name, private_key=private_key, listen_port=listen_port)
        for peer in peers:
            spec: dict = {"public_key": peer.public_key, "remove": peer.remove,
                          "replace_allowed_ips": peer.replace_allowed_ips}
            if peer.endpoint:
                host, _, port = peer.endpoint.rpartition(":")
                spec.update(endpoint_addr=host.strip("[]"), endpoint_port=int(port))
            if peer.persistent_keepalive is not None:
                spec["persistent_keepalive"] = peer.persistent_keepalive
            if peer.allowed_ips is not None:
                spec["allowed_ips"] = list(peer.allowed_ips)
            wg.set(name, peer=spec)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def get(name: str, netns: str | None) -> tuple[str, int, list[PeerStatus]]:
    public, port, peers = "", 0, []
    with _genl(name, netns, "reading") as wg:
        for msg in wg.info(name):
            public = _text(msg.get_attr("WGDEVICE_A_PUBLIC_KEY") or public)
            port = msg.get_attr("WGDEVICE_A_LISTEN_PORT") or port
            for peer in msg.get_attr("WGDEVICE_A_PEERS") or ():
                endpoint = peer.get_attr("WGPEER_A_ENDPOINT")
                handshake = peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME") or {}
                allowed = peer.get_attr("WGPEER_A_ALLOWEDIPS") or ()
                peers.append(PeerStatus(
                    public_key=_text(peer.get_attr("WGPEER_A_PUBLIC_KEY")),
                    endpoint=f"{endpoint['addr']}:{endpoint['port']}" if endpoint else None,
                    allowed_ips=tuple(a["addr"] for a in allowed if "addr" in a),
                    latest_handshake=handshake.get("tv_sec", 0) + handshake.get("tv_nsec", 0) / 1e9,
                    rx_bytes=peer.get_attr("WGPEER_A_RX_BYTES") or 0,
                    tx_bytes=peer.get_attr("WGPEER_A_TX_BYTES") or 0,
                    persistent_keepalive=peer.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0))
    return public, port, peers
