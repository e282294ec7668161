"""The agent's network operations on its own host (it runs inside the host's namespace).

    net = NetOps(host="h1", netns_prefix="cm-c-h1")
    path, _ = net.create_container_netns("web", "100.96.0.1")   # /run/netns/cm-c-h1-web
    net.publish(owner="web", public_ip=..., host_port=8080, service_ip=..., container_port=80)

A thin host-side face of cloudmig.network: the container namespace naming lives here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from pyroute2 import IPRoute

from cloudmig import errors
from cloudmig.network import _ns, keys, lock, pins, proxy, replies, routing, wireguard

HOST_NETNS = None  # the agent's own namespace

log = logging.getLogger(__name__)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


_state_files = threading.Lock()


def _set_in_json(path: Path, key: str, value) -> None:
    """``path``'s JSON object with ``key`` set to ``value`` (removed for None), written whole.
    Migrations run in threads of one agent: two of them changing one file at once each keep
    their change (a read-modify-write under a lock, through a temporary file of its own)."""
    with _state_files:
        data = _read_json(path)
        if value is None:
            if data.pop(key, None) is None:
                return
        else:
            data[key] = value
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)


class NetOps:
    def __init__(self, host: str, netns_prefix: str, host_dir: Path) -> None:
        self.host = host
        self.netns_prefix = netns_prefix
        self.key_dir = host_dir / "wireguard"
        # service IPs this host sends into a tunnel: put back when the tunnel is (see tunnel_up)
        self._tunnel_routes = host_dir / "tunnel-routes.json"
        # the tunnels this host keeps up, and how (no secret: the private key stays in its file)
        self._tunnels_file = host_dir / "tunnels.json"
        self._keeper: threading.Thread | None = None
        self._keeper_lock = threading.Lock()
        if self._kept():
            self._start_keeper()

    def container_netns(self, name: str) -> str:
        return f"{self.netns_prefix}-{name}"

    def container_netns_path(self, name: str) -> str:
        return f"/run/netns/{self.container_netns(name)}"

    def container_veth(self, name: str) -> str:
        return routing.host_veth_name(self.container_netns(name))

    def create_container_netns(self, name: str, service_ip: str, keep_route: bool = False) -> tuple[str, bool]:
        """The container's namespace with its service IP, and whether the service IP is now
        routed to it. With ``keep_route``, a route this host already has for the service IP
        (into a tunnel: it forwards to the container's current home) stays, untouched, until
        the caller switches it to the new namespace: for a moment pointed at the new
        namespace, it would reset every connection that arrived then (a move back to the
        host that forwards the container)."""
        route = not (keep_route and self.has_route(service_ip))
        routing.create_container_netns(HOST_NETNS, self.container_netns(name), service_ip, route=route)
        return self.container_netns_path(name), route

    def routed_to_tunnel_since(self, service_ip: str) -> bool:
        """Whether this host remembers sending SERVICE_IP into a tunnel (the tunnel's keeper
        would route it there again when the tunnel comes back)."""
        return service_ip in self._routes()

    @staticmethod
    def has_route(service_ip: str) -> bool:
        with IPRoute() as ipr:
            return any(route.get_attr("RTA_DST") == service_ip and route.get("dst_len") == 32
                       and route.get_attr("RTA_OIF")
                       for route in ipr.get_routes(family=2, table=254))   # a dump: no lookup

    def set_uplink(self, name: str, up: bool) -> None:
        """Bring the host side of the container's veth up or down."""
        with IPRoute() as ipr:  # the agent's own namespace
            idx = _ns.link_index(ipr, self.container_veth(name))
            if idx is not None:
                ipr.link("set", index=idx, state="up" if up else "down")

    def arm_lock(self, name: str) -> None:
        lock.arm(self.container_netns(name))

    def lock_container(self, name: str, armed: bool = False) -> None:
        lock.lock(self.container_netns(name), armed=armed)

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
        config = dict(ifname=ifname, listen_port=listen_port, address=address,
                      peer_public_key=peer_public_key, peer_endpoint=peer_endpoint,
                      peer_address=peer_address, keepalive_s=keepalive_s)
        with self._keeper_lock:
            if self._is_dead(ifname):      # wireguard-go died: its socket file lingers
                wireguard.down(ifname, HOST_NETNS)
            st = self._bring_up(**config)
            self._keep(ifname, config)
        self._start_keeper()
        return st

    # ------------------------------------------------------------------ the tunnel keeper
    # A tunnel is kept up by the agent of each of its ends: should its wireguard-go die (or be
    # killed), it is started again within KEEPER_PERIOD_S with the same key, port and peer, and
    # the routes this host had through it come back; connections through it see a short
    # outage, which they ride out (RIDE_OUT_SYSCTLS). Measured in the fault matrix.
    KEEPER_PERIOD_S = 1.0

    def _kept(self) -> dict[str, dict]:
        return _read_json(self._tunnels_file)

    def _keep(self, ifname: str, config: dict | None) -> None:
        _set_in_json(self._tunnels_file, ifname, config)

    def _start_keeper(self) -> None:
        with self._keeper_lock:
            if self._keeper is None:
                self._keeper = threading.Thread(target=self._keeper_loop, name="tunnel-keeper", daemon=True)
                self._keeper.start()

    def _keeper_loop(self) -> None:
        while True:
            time.sleep(self.KEEPER_PERIOD_S)
            self.ensure_tunnels()

    def ensure_tunnels(self) -> list[str]:
        """One pass of the keeper, now: the kept tunnels whose interface is gone are brought
        back. A migration calls it before it binds the page server to its tunnel address (the
        keeper's next pass may be a second away). Returns the tunnels brought back."""
        back = []
        for ifname, config in self._kept().items():
            try:
                with self._keeper_lock:
                    if ifname in self._kept() and self._is_dead(ifname):
                        log.warning("tunnel %s was gone; bringing it back", ifname)
                        wireguard.down(ifname, HOST_NETNS)
                        self._bring_up(**config)
                        back.append(ifname)
            except Exception:         # noqa: BLE001 - the keeper tries again next period
                log.exception("could not bring tunnel %s back", ifname)
        return back

    @staticmethod
    def _is_dead(ifname: str) -> bool:
        """Recorded as up, but its interface is gone (wireguard-go's TUN device dies with it)."""
        try:
            socket.if_nametoindex(ifname)       # the agent's own namespace; microseconds
        except OSError:
            return True
        return False

    def _bring_up(self, ifname: str, listen_port: int, address: str, peer_public_key: str,
                  peer_endpoint: str, peer_address: str, keepalive_s: int = 0) -> dict:
        # the peer may carry any source: replies to clients of forwarded ports come back
        # through it with the client's address (one interface per host pair makes this safe)
        peer = wireguard.Peer(public_key=peer_public_key, endpoint=peer_endpoint,
                              allowed_ips=(f"{peer_address}/32", "0.0.0.0/0"),
                              persistent_keepalive=keepalive_s)
        st = wireguard.up(ifname, HOST_NETNS, self._key_file(ifname), listen_port,
                          f"{address}/32", [peer])
        self._restore_routes(ifname)
        return st.to_dict()

    def _restore_routes(self, ifname: str) -> None:
        """A tunnel brought up again after its interface vanished (wireguard-go died: the
        routes through it went with the link): what this host routed into it comes back."""
        if any(t.ifname == ifname for t in replies.list_tracked(HOST_NETNS)):
            replies.track_tunnel(HOST_NETNS, ifname)        # its reply route and rule
        for service_ip, via in self._routes().items():
            if via == ifname:
                routing.route_service(HOST_NETNS, service_ip, ifname)

    def _routes(self) -> dict[str, str]:
        return _read_json(self._tunnel_routes)

    def _remember_route(self, service_ip: str, ifname: str | None) -> None:
        _set_in_json(self._tunnel_routes, service_ip, ifname)

    def tunnel_warm(self, ifname: str, peer_address: str) -> dict:
        return dataclasses.asdict(wireguard.warm(ifname, HOST_NETNS, peer_address))

    def tunnel_keepalive(self, ifname: str, keepalive_s: int) -> None:
        """Turn the peer's persistent keepalive on once this end has a session (see
        wireguard.keep_alive); the keeper brings the tunnel back with it."""
        config = self._kept().get(ifname)
        if config is None:
            raise errors.NetworkError(f"Tunnel {ifname} is not up on this host.",
                                      hint="`cloudmig tunnel up` brings it up.")
        wireguard.keep_alive(ifname, HOST_NETNS, config["peer_public_key"], keepalive_s)
        with self._keeper_lock:
            current = self._kept().get(ifname)     # as kept now: down or up again meanwhile
            if current is not None:
                self._keep(ifname, current | {"keepalive_s": keepalive_s})

    def tunnel_status(self, ifname: str) -> dict:
        return wireguard.status(ifname, HOST_NETNS).to_dict()

    def tunnel_down(self, ifname: str) -> bool:
        with self._keeper_lock:
            self._keep(ifname, None)
        replies.untrack_tunnel(HOST_NETNS, ifname)
        for service_ip, via in self._routes().items():
            if via == ifname:
                self._remember_route(service_ip, None)
        return wireguard.down(ifname, HOST_NETNS, self._key_file(ifname))

    def connections(self, service_ip: str, established_only: bool = False) -> list[dict]:
        return [dataclasses.asdict(c) for c in pins.connections_of(service_ip, established_only)]

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
        self._remember_route(service_ip, ifname)

