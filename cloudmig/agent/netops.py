"""The agent's network operations on its own host (it runs inside the host's namespace).

    net = NetOps(host="h1", netns_prefix="cm-c-h1")
    path = net.create_container_netns("web", "100.96.0.1")   # /run/netns/cm-c-h1-web
    net.publish(owner="web", public_ip=..., host_port=8080, service_ip=..., container_port=80)

A thin host-side face of cloudmig.network: the container namespace naming lives here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pyroute2 import IPRoute

from cloudmig.network import keys, lock, pins, proxy, replies, routing, wireguard

HOST_NETNS = None  # the agent's own namespace


class NetOps:
    def __init__(self, host: str, netns_prefix: str, host_dir: Path) -> None:
        self.host = host
        self.netns_prefix = netns_prefix
        self.key_dir = host_dir / "wireguard"

    def container_netns(self, name: str) -> str:
        return f"{self.netns_prefix}-{name}"

    def container_netns_path(self, name: str) -> str:
        return f"/run/netns/{self.container_netns(name)}"

    def container_veth(self, name: str) -> str:
        return routing.host_veth_name(self.container_netns(name))

    def create_container_netns(self, name: str, service_ip: str, keep_route: bool = False) -> str:
        """The container's namespace with its service IP. With ``keep_route``, a route this
        host already has for the service IP (into a tunnel: it forwards to the container's
        current home) stays until the caller switches it to the new namespace."""
        previous = self._route_ifname(service_ip) if keep_route else None
        routing.create_container_netns(HOST_NETNS, self.container_netns(name), service_ip)
        if previous and previous != self.container_veth(name):
            routing.route_service(HOST_NETNS, service_ip, previous)
        return self.container_netns_path(name)

    @staticmethod
    def _route_ifname(service_ip: str) -> str | None:
        with IPRoute() as ipr:
            for route in ipr.get_routes(family=2, table=254):   # a dump: no lookup
                if (route.get_attr("RTA_DST") == service_ip and route.get("dst_len") == 32
                        and route.get_attr("RTA_OIF")):
                    links = ipr.get_links(route.get_attr("RTA_OIF"))
                    return links[0].get_attr("IFLA_IFNAME") if links else None
        return None

    def set_uplink(self, name: str, up: bool) -> None:
        """Bring the host side of the container's veth up or down."""
        with IPRoute() as ipr:  # the agent's own namespace
            idx = ipr.link_lookup(ifname=self.container_veth(name))
            if idx:
                ipr.link("set", index=idx[0], state="up" if up else "down")

    def lock_container(self, name: str) -> None:
        lock.lock(self.container_netns(name))

    def unlock_container(self, name: str) -> bool:
        return lock.unlock(self.container_netns(name))

    def delete_container_netns(self, name: str) -> None:
        routing.delete_container_netns(HOST_NETNS, self.container_netns(name))

    # ------------------------------------------------------------------ published ports
    def publish(self, owner: str, public_ip: str, host_port: int, service_ip: str,
                container_port: int, proto: str = "tcp") -> None:
        proxy.publish(HOST_NETNS, public_ip=public_ip, host_port=host_port, service_ip=service_ip,
                      container_port=container_port, proto=proto, owner=owner)

    def unpublish(self, owner: str) -> None:
        proxy.unpublish(HOST_NETNS, owner=owner)

    def forwards(self) -> list[dict]:
        return [dataclasses.asdict(f) for f in proxy.list_forwards(HOST_NETNS)]

    # ------------------------------------------------------------------ tunnels
    def _key_file(self, ifname: str) -> Path:
        return self.key_dir / f"{ifname}.key"

    def tunnel_key(self, ifname: str) -> str:
        """Make this side's key pair (private key stays here, 0600); return the public key."""
        path = self._key_file(ifname)
        if path.exists():
            return keys.public_key(keys.load(path))
        return keys.create(path)

    def tunnel_up(self, ifname: str, listen_port: int, address: str, peer_public_key: str,
                  peer_endpoint: str, peer_address: str, keepalive_s: int = 0) -> dict:
        # the peer may carry any source: replies to clients of forwarded ports come back
        # through it with the client's address (one interface per host pair makes this safe)
        peer = wireguard.Peer(public_key=peer_public_key, endpoint=peer_endpoint,
                              allowed_ips=(f"{peer_address}/32", "0.0.0.0/0"),
                              persistent_keepalive=keepalive_s)
        st = wireguard.up(ifname, HOST_NETNS, self._key_file(ifname), listen_port,
                          f"{address}/32", [peer])
        return st.to_dict()

    def tunnel_warm(self, ifname: str, peer_address: str) -> dict:
        return dataclasses.asdict(wireguard.warm(ifname, HOST_NETNS, peer_address))

    def tunnel_status(self, ifname: str) -> dict:
        return wireguard.status(ifname, HOST_NETNS).to_dict()

    def tunnel_down(self, ifname: str) -> bool:
        replies.untrack_tunnel(HOST_NETNS, ifname)
        return wireguard.down(ifname, HOST_NETNS, self._key_file(ifname))

    def connections(self, service_ip: str) -> list[dict]:
        return [dataclasses.asdict(c) for c in pins.connections_of(service_ip)]

    def pin_replies(self, service_ip: str, connections: list[dict]) -> int:
        return pins.pin(HOST_NETNS, service_ip, [pins.Pin(**c) for c in connections])

    def unpin_replies(self, service_ip: str) -> int:
        return pins.unpin(HOST_NETNS, service_ip)

    def track_tunnel(self, ifname: str) -> int:
        """Replies leave through the tunnel their connection came in from (see network/replies)."""
        return replies.track_tunnel(HOST_NETNS, ifname)

    # ------------------------------------------------------------------ service IP moves
    def route_service(self, service_ip: str, ifname: str | None = None, container: str | None = None) -> None:
        """Send SERVICE_IP into tunnel ``ifname``, or back to ``container``'s own veth."""
        routing.route_service(HOST_NETNS, service_ip, ifname or self.container_veth(container or ""))

