"""The agent's network operations on its own host (it runs inside the host's namespace).

    net = HostNet(host="h1", netns_prefix="cm-c-h1")
    path = net.create_container_netns("web", "100.96.0.1")   # /run/netns/cm-c-h1-web
    net.publish(owner="web", public_ip=..., host_port=8080, service_ip=..., container_port=80)

A thin host-side face of cloudmig.network: the container namespace naming lives here.
"""

from __future__ import annotations

import dataclasses

from cloudmig.network import proxy, routing

HOST_NETNS = None  # the agent's own namespace


class HostNet:
    def __init__(self, host: str, netns_prefix: str) -> None:
        self.host = host
        self.netns_prefix = netns_prefix

    def container_netns(self, name: str) -> str:
        return f"{self.netns_prefix}-{name}"

    def container_netns_path(self, name: str) -> str:
        return f"/run/netns/{self.container_netns(name)}"

    def container_veth(self, name: str) -> str:
        return routing.host_veth_name(self.container_netns(name))

    def create_container_netns(self, name: str, service_ip: str) -> str:
        routing.create_container_netns(HOST_NETNS, self.container_netns(name), service_ip)
        return self.container_netns_path(name)

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
