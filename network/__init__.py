"""cloudmig's network layer: WireGuard tunnels, overlay addresses, routes, the endpoint proxy
and its reply paths.

    from cloudmig.network import addressing, keys, proxy, replies, routing, wireguard

Every function takes ``netns``: a name under /run/netns, or None for the current namespace.
Errors are ``cloudmig.errors.NetworkError``. Design: docs/network.md.
"""

from cloudmig.network import addressing, keys, proxy, replies, routing, wireguard

__all__ = ["addressing", "keys", "proxy", "replies", "routing", "wireguard"]
