"""The controller's record of hosts, containers and tunnels (one JSON file, locked).

    from cloudmig import inventory
    inv = inventory.Inventory()
    with inv.transaction() as data:
        data.hosts["h1"] = inventory.HostRecord(name="h1", provider="lab", ...)
    print(inv.read().containers)

Secrets never live here: tokens and keys are separate 0600 files next to it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel, Field

from cloudmig import errors, paths

INVENTORY_VERSION = 1


class HostRecord(BaseModel):
    name: str
    provider: str
    public_address: str | None = None
    state: str = "pending"            # pending | ready | gone | error
    transport: str = "unix"           # unix (agent socket on this machine) | ssh
    agent: dict[str, str] = Field(default_factory=dict)   # socket path, or ssh target / port
    overlay_address: str | None = None                    # this host's tunnel address
    resources: dict[str, str] = Field(default_factory=dict)  # provider ids to destroy later
    options: dict[str, str] = Field(default_factory=dict)    # provider-only options used
    created_at: float = 0.0


class PortMapping(BaseModel):
    host_port: int
    container_port: int
    proto: str = "tcp"


class ForwardRecord(BaseModel):
    """A host that keeps forwarding its published ports to a container that left it."""
    host: str
    ports: list[PortMapping] = Field(default_factory=list)


class ContainerRecord(BaseModel):
    name: str
    host: str
    service_ip: str
    image: str = "host"
    layers: list[str] = Field(default_factory=list)   # image layer digests, lowest first ("host": none)
    command: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    ports: list[PortMapping] = Field(default_factory=list)
    memory_limit_bytes: int | None = None   # cgroup limit; travels with the container
    labels: dict[str, str] = Field(default_factory=dict)   # `run --label k=v`; plans select by them
    state: str = "running"
    forwards: list[ForwardRecord] = Field(default_factory=list)
    created_at: float = 0.0


class TunnelRecord(BaseModel):
    a: str
    b: str
    iface_a: str
    iface_b: str
    port_a: int
    port_b: int
    created_at: float = 0.0

    @property
    def key(self) -> str:
        return tunnel_key(self.a, self.b)

    def ifname_on(self, host: str) -> str:
        """The tunnel's interface on ``host`` (one of its two ends)."""
        return self.iface_a if host == self.a else self.iface_b


def tunnel_key(a: str, b: str) -> str:
    return "--".join(sorted((a, b)))


class InventoryData(BaseModel):
    version: int = INVENTORY_VERSION
    hosts: dict[str, HostRecord] = Field(default_factory=dict)
    containers: dict[str, ContainerRecord] = Field(default_factory=dict)
    tunnels: dict[str, TunnelRecord] = Field(default_factory=dict)
    # allocations that must not collide: overlay addresses, service IPs, interface indexes
    allocations: dict[str, list[str]] = Field(default_factory=dict)

    def host(self, name: str) -> HostRecord:
        try:
            return self.hosts[name]
        except KeyError:
            known = ", ".join(sorted(self.hosts)) or "none"
            raise errors.ConfigError(f"Unknown host {name!r} (known hosts: {known}).",
                                     hint="Run `cloudmig hosts` to list them.") from None

    def container(self, name: str) -> ContainerRecord:
        try:
            return self.containers[name]
        except KeyError:
            raise errors.ConfigError(f"Unknown container {name!r}.",
                                     hint="Run `cloudmig ps` to list containers.") from None


class Inventory:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or paths.state_dir() / "inventory.json"

    def read(self) -> InventoryData:
        if not self.path.exists():
            return InventoryData()
        with self._locked(fcntl.LOCK_SH):
            return self._load()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[InventoryData]:
        """Read-modify-write under an exclusive lock; saved only if the block succeeds."""
        with self._locked(fcntl.LOCK_EX):
            data = self._load()
            yield data
            self._save(data)

    @contextlib.contextmanager
    def _locked(self, mode: int):
        paths.ensure_private_dir(self.path.parent)
        with open(self.path.with_suffix(".lock"), "a+") as lock:
            fcntl.flock(lock, mode)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self) -> InventoryData:
        if not self.path.exists():
            return InventoryData()
        raw = json.loads(self.path.read_text())
        if raw.get("version") != INVENTORY_VERSION:
            raise errors.ConfigError(f"{self.path} has inventory version {raw.get('version')}; "
                                     f"this cloudmig reads version {INVENTORY_VERSION}.")
        return InventoryData.model_validate(raw)

    def _save(self, data: InventoryData) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(data.model_dump_json(indent=2))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
