"""Typed peers and status of a WireGuard interface, shared by both backends.

    peer = Peer(public_key="base64...", endpoint="198.18.250.12:51820",
                allowed_ips=["100.64.0.2/32"], persistent_keepalive=25)
"""

from __future__ import annotations

import dataclasses
import time


@dataclasses.dataclass(frozen=True)
class Peer:
    """A peer as configured: who it is, where it listens, which addresses it may carry."""

    public_key: str
    endpoint: str | None = None          # "IP:PORT" of its public UDP socket
    allowed_ips: tuple[str, ...] = ()    # CIDRs, e.g. ("100.64.0.2/32",)
    persistent_keepalive: int = 0        # seconds, 0 = off

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_ips", tuple(self.allowed_ips))


@dataclasses.dataclass(frozen=True)
class PeerUpdate:
    """One change to one peer (internal: what both backends know how to apply)."""

    public_key: str
    endpoint: str | None = None
    allowed_ips: tuple[str, ...] | None = None   # None: leave as is
    replace_allowed_ips: bool = False
    persistent_keepalive: int | None = None
    remove: bool = False


@dataclasses.dataclass(frozen=True)
class PeerStatus:
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: float      # seconds since the epoch; 0.0 = never
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int

    def handshake_age_s(self, now: float | None = None) -> float | None:
        if not self.latest_handshake:
            return None
        return (time.time() if now is None else now) - self.latest_handshake


@dataclasses.dataclass(frozen=True)
class TunnelStatus:
    name: str
    netns: str | None
    backend: str                 # "kernel" or "wireguard-go"
    public_key: str
    listen_port: int
    peers: tuple[PeerStatus, ...]

    def peer(self, public_key: str) -> PeerStatus | None:
        return next((p for p in self.peers if p.public_key == public_key), None)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
