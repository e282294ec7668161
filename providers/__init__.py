"""The provider interface: how cloudmig creates, describes and destroys hosts.

    from cloudmig import providers
    lab = providers.load("lab")
    record = lab.create_host(providers.HostSpec(name="h3", provider="lab"))
    lab.destroy_host(record)

Every provider implements the same verbs (``create_host``, ``describe_host``,
``list_hosts``, ``destroy_host``, ``allow_tunnel_peer``, ``revoke_tunnel_peer``, ``plan_create``). Provider-only
options travel in ``HostSpec.options`` under names the provider documents in
``option_help``. Providers are found through the entry-point group ``cloudmig.providers``;
the built-ins (lab, aws, azure, ssh) register through the same group. Cloud SDKs are
imported inside the provider modules, only when used.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from typing import Callable, Protocol, runtime_checkable

from cloudmig import errors
from cloudmig.inventory import HostRecord

__all__ = ["HostSpec", "HostRecord", "Provider", "Progress", "load", "available", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "cloudmig.providers"

Progress = Callable[[str], None]
"""Called with one human-readable line per step of long work."""


def _no_progress(_line: str) -> None:
    pass


@dataclasses.dataclass
class HostSpec:
    name: str
    provider: str
    options: dict[str, str] = dataclasses.field(default_factory=dict)
    # public addresses allowed to reach the host's WireGuard port (its tunnel peers)
    tunnel_peers: list[str] = dataclasses.field(default_factory=list)
    # address (CIDR) of the operator, allowed to reach SSH
    operator_cidr: str | None = None
    # an operator CIDR of /0 (SSH open to everyone) is refused unless this is set
    allow_ssh_from_anywhere: bool = False
    ssh_public_key: str | None = None
    # cloud-init user-data that bootstraps the host and starts the agent
    user_data: str | None = None


@runtime_checkable
class Provider(Protocol):
    name: str
    capabilities: frozenset[str]        # e.g. {"create", "destroy", "elastic-ip", "tunnel-firewall"}
    option_help: dict[str, str]         # provider-only options: name -> description

    def plan_create(self, spec: HostSpec) -> list[str]:
        """What create_host would make, one line per resource (for --dry-run). Changes nothing."""

    def create_host(self, spec: HostSpec, progress: Progress = _no_progress) -> HostRecord:
        """Create the host and everything it needs; on failure, remove what was made, then raise."""

    def describe_host(self, record: HostRecord) -> HostRecord:
        """The host as the provider sees it now (state, public address)."""

    def list_hosts(self) -> list[HostRecord]:
        """Hosts this provider owns (by its ownership tags)."""

    def destroy_host(self, record: HostRecord, progress: Progress = _no_progress) -> None:
        """Remove everything create_host made. Safe to call again: a second call is a no-op."""

    def allow_tunnel_peer(self, record: HostRecord, peer_address: str, port: int) -> None:
        """Open the host's WireGuard UDP port to one peer's public address."""

    def revoke_tunnel_peer(self, record: HostRecord, peer_address: str, port: int) -> None:
        """Close what allow_tunnel_peer opened (a rule already gone is fine)."""


def available() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load(name: str) -> Provider:
    eps = available()
    if name not in eps:
        raise errors.ConfigError(f"Unknown provider {name!r} (available: {', '.join(sorted(eps))}).")
    factory = eps[name].load()
    return factory()
