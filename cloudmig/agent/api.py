"""The agent's operations as typed methods: what the controller calls, and what comes back.

    agent = api.Agent(dial.connect(record))
    agent.ping().version
    agent.outgoing.arm("db", mode=Mode.POSTCOPY, address="100.64.0.1", port=27000)
    agent.incoming.restore("db", page_server="100.64.0.1", port=27000).pid

Each method sends one request over the host's channel (cloudmig.agent.client) under an op name
written out here and at its handler (search for "outgoing.arm" finds both), and turns the
answer into the dataclass it names. Results travel as plain JSON (protocol.jsonable).
"""

from __future__ import annotations

import base64
import dataclasses
import enum
from typing import Any

from cloudmig.agent.client import AgentClient
from cloudmig.network.pins import Connection, Pin


class Mode(str, enum.Enum):
    """How a migration moves memory."""
    POSTCOPY = "postcopy"     # resume at once; memory follows on demand and in the background
    STOPCOPY = "stopcopy"     # dump everything, copy, restore: the baseline

    @property
    def lazy(self) -> bool:
        return self is Mode.POSTCOPY


# ---------------------------------------------------------------------------------- results
@dataclasses.dataclass
class SideStatus:
    """One side of a migration on an agent: its state, the ops running now, and whether this
    agent ran it (``known`` False: an earlier agent did, and its journal says so)."""
    state: str
    busy: str | None = None
    known: bool = True


@dataclasses.dataclass
class MigrationStatus:
    """A container's migration as one host sees it (a side is None where it has none)."""
    outgoing: SideStatus | None
    incoming: SideStatus | None
    container: str               # runc's status of the container here, or "absent"

@dataclasses.dataclass
class Ping:
    host: str
    protocol: int
    version: str
    pid: int
    kernel: str
    root_id: str = ""            # which root file system the host runs on (agent.ops.root_id)


@dataclasses.dataclass
class Memory:
    mem_available: int          # bytes this host can still give
    disk_free: int              # bytes free under the agent's directory
    rss: int = 0                # resident memory of the container asked about


@dataclasses.dataclass
class Receiver:
    """A one-time receiver the destination opened on its tunnel address."""
    port: int
    token: str


@dataclasses.dataclass
class Sent:
    bytes: int
    files: int = 0
    deleted: int = 0


@dataclasses.dataclass
class Dumped:
    dump_ms: float
    steps_ms: dict[str, float]
    connections: list[Connection]       # the container's TCP connections at the freeze
    upper: Sent                         # the writable layer's last changes, sent in the same call
    images: Sent                        # CRIU's images, sent in the same call
    hot: dict[str, int] = dataclasses.field(default_factory=dict)   # pages sent ahead: sent,
    # sent_bytes, unchanged, changed (new contents with the images), dropped (cloudmig.runtime.hot_pages)


@dataclasses.dataclass
class DumpEnd:
    rc: int | None                      # None: still serving pages when the wait timed out
    stats: dict[str, Any]               # CRIU's stats-dump entry


@dataclasses.dataclass
class Restored:
    pid: int
    restore_ms: float
    steps_ms: dict[str, float]
    hot_installed: int = 0              # pages sent ahead that went into the images as present
    smaps: dict[str, int] = dataclasses.field(default_factory=dict)  # post-copy: processes whose
    # mappings' flags CRIU's dump took from a copy of smaps ("used") or read ("read"), as the
    # source's check said before the unlock (cloudmig.runtime.smaps_ahead)


@dataclasses.dataclass
class LazyProgress:
    done: bool
    lazy_pages: int = 0
    copied_pages: int = 0
    faulted_pages: int = 0
    pushed_pages: int = 0
    rc: int | None = None               # the lazy-pages daemon's exit status, once done
    page_size: int = 4096               # of the host that counted the pages
    lost: str | None = None             # why the rest of the memory can no longer arrive


def _make(cls, data: dict):
    return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


# ---------------------------------------------------------------------------------- stubs
class _Ops:
    def __init__(self, client: AgentClient) -> None:
        self._c = client


class Outgoing(_Ops):
    """The source's side of one container's migration (cloudmig.agent.outgoing)."""

    def presync(self, name: str, mode: Mode, rx: Receiver, address: str) -> Sent:
        """Begin: the writable layer as it is now goes ahead (while the container runs)."""
        return _make(Sent, self._c.call("outgoing.presync", name=name, mode=mode.value, address=address,
                                        port=rx.port, token=rx.token))

    def arm(self, name: str, address: str, port: int, receivers_at: str,
            receivers: dict[str, Receiver], hot: Receiver | None = None) -> list[str]:
        """Start the dump's runc and CRIU (post-copy), waiting at their gate, and connect to
        the destination's ``receivers`` (by what they receive: "upper", "images") at
        ``receivers_at``, for the freeze; with ``hot``, send the pages the container will
        likely touch first there now. The container's stdio paths, which the destination's
        runc needs."""
        return self._c.call("outgoing.arm", name=name, address=address, port=port, receivers_at=receivers_at,
                            ports={what: rx.port for what, rx in receivers.items()},
                            hot=[hot.port, hot.token] if hot else None)

    def disarm(self, name: str) -> None:
        self._c.call("outgoing.disarm", name=name)

    def hold(self, name: str, service_ip: str, endpoints: list[tuple[str, int, str]], not_from: str) -> None:
        """Queue the container's packets in the kernel from now on (instead of dropping them),
        except those coming in on the tunnel ``not_from``."""
        self._c.call("outgoing.hold", name=name, service_ip=service_ip, endpoints=[list(e) for e in endpoints],
                     not_from=not_from)

    def release_hold(self, name: str) -> int:
        return int(self._c.call("outgoing.release_hold", name=name))

    def switch_over(self, name: str, service_ip: str, tunnel_ifname: str) -> int:
        """The service IP into the tunnel, the held packets after it, the stale copy cut off
        (post-copy); how many packets were held."""
        return int(self._c.call("outgoing.switch_over", name=name, service_ip=service_ip,
                                tunnel_ifname=tunnel_ifname))

    def checkpoint(self, name: str, service_ip: str, address: str, upper: Receiver,
                   images: Receiver, flags: Receiver | None = None) -> Dumped:
        """Lock, freeze, dump; then the writable layer's last changes and the images go into
        the destination's receivers at ``address``, in the same call; post-copy's check of
        the mappings' flags follows into ``flags`` after the call."""
        d = self._c.call("outgoing.checkpoint", name=name, service_ip=service_ip, address=address,
                         upper=[upper.port, upper.token], images=[images.port, images.token],
                         flags=[flags.port, flags.token] if flags else None)
        d["connections"] = [Connection(**c) for c in d["connections"]]
        for key in ("upper", "images"):
            d[key] = _make(Sent, d[key])
        return _make(Dumped, d)

    def wait_dump(self, name: str, timeout_s: float | None = None) -> DumpEnd:
        return _make(DumpEnd, self._c.call("outgoing.wait_dump", name=name, timeout_s=timeout_s))

    def rollback(self, name: str, mode: Mode, service_ip: str) -> None:
        self._c.call("outgoing.rollback", name=name, mode=mode.value, service_ip=service_ip)

    def finish(self, name: str, service_ip: str) -> None:
        self._c.call("outgoing.finish", name=name, service_ip=service_ip)

    def take_back(self, name: str, service_ip: str) -> None:
        """The frozen copy here runs again, as at the freeze (the destination's was lost)."""
        self._c.call("outgoing.take_back", name=name, service_ip=service_ip)


class Incoming(_Ops):
    """The destination's side of one container's migration (cloudmig.agent.incoming)."""

    def prepare(self, name: str, mode: Mode, image: str, command: list[str], env: dict[str, str],
                service_ip: str, memory_limit_bytes: int | None, layers: list[str]) -> None:
        self._c.call("incoming.prepare", name=name, mode=mode.value, image=image, command=command,
                     env=env, service_ip=service_ip, memory_limit_bytes=memory_limit_bytes,
                     layers=layers)

    def receive(self, name: str, what: str, bind_address: str) -> Receiver:
        """Open a receiver for ``what`` ("upper", "images", "hot" or "flags") on the tunnel address."""
        return _make(Receiver, self._c.call("incoming.receive", name=name, what=what,
                                            bind_address=bind_address))

    def receive_wait(self, name: str, what: str) -> int:
        return int(self._c.call("incoming.receive_wait", name=name, what=what))

    def arm(self, name: str, descriptors: list[str], page_server: str, port: int) -> None:
        """runc restore waits at its gate; post-copy's lazy-pages daemon listens already."""
        self._c.call("incoming.arm", name=name, descriptors=descriptors, page_server=page_server, port=port)

    def restore(self, name: str, page_server: str, port: int, service_ip: str,
                pins: list[Pin] | None = None) -> Restored:
        """CRIU restores while ``pins`` are set; then the agent routes and unlocks the
        container (go_live)."""
        return _make(Restored, self._c.call("incoming.restore", name=name, page_server=page_server,
                                            port=port, service_ip=service_ip,
                                            pins=[dataclasses.asdict(p) for p in pins or []]))

    def go_live(self, name: str, service_ip: str) -> None:
        """Records the switch on the destination (routed and unlocked by its restore already;
        an agent that took the migration over since does it here)."""
        self._c.call("incoming.go_live", name=name, service_ip=service_ip)

    def lazy_progress(self, name: str, wait_s: float = 0.0) -> LazyProgress:
        """``wait_s``: answer as soon as the transfer ends, or after that long at most."""
        return _make(LazyProgress, self._c.call("incoming.lazy_progress", name=name, wait_s=wait_s))

    def finish(self, name: str) -> LazyProgress:
        """Wait for the lazy-pages daemon to end; the migration is complete here."""
        return _make(LazyProgress, self._c.call("incoming.finish", name=name))

    def abort(self, name: str, service_ip: str) -> None:
        self._c.call("incoming.abort", name=name, service_ip=service_ip)

    def drop(self, name: str, service_ip: str) -> None:
        """After the resume, memory lost: the incomplete copy stopped and removed here."""
        self._c.call("incoming.drop", name=name, service_ip=service_ip)


class Net(_Ops):
    def route_service(self, service_ip: str, ifname: str | None = None, container: str | None = None) -> None:
        self._c.call("net.route_service", service_ip=service_ip, ifname=ifname, container=container)

    def track_tunnel(self, ifname: str) -> None:
        self._c.call("net.track_tunnel", ifname=ifname)

    def connections(self, service_ip: str, established_only: bool = False) -> list[Connection]:
        """``established_only``: without the closed ones conntrack still keeps (plans' drain)."""
        args = {"established_only": True} if established_only else {}
        return [Connection(**c) for c in self._c.call("net.connections", service_ip=service_ip, **args)]

    def pin_replies(self, service_ip: str, pins: list[Pin]) -> None:
        self._c.call("net.pin_replies", service_ip=service_ip,
                     connections=[dataclasses.asdict(p) for p in pins])

    def publish(self, owner: str, public_ip: str, host_port: int, service_ip: str,
                container_port: int, proto: str) -> None:
        self._c.call("net.publish", owner=owner, public_ip=public_ip, host_port=host_port,
                     service_ip=service_ip, container_port=container_port, proto=proto)


class Tunnel(_Ops):
    def warm(self, ifname: str, peer_address: str) -> None:
        self._c.call("tunnel.warm", ifname=ifname, peer_address=peer_address)


class Probe(_Ops):
    """Before the freeze: prove the page server's port is reachable through the tunnel."""

    def free_port(self, address: str) -> int:
        return int(self._c.call("probe.free_port", address=address))

    def listen(self, address: str, port: int) -> None:
        self._c.call("probe.listen", address=address, port=port)

    def connect(self, address: str, port: int) -> None:
        self._c.call("probe.connect", address=address, port=port)

    def close(self, address: str, port: int) -> None:
        self._c.call("probe.close", address=address, port=port)

    def sink(self, address: str) -> int:
        """The tunnel's throughput, receiving end: a port on ADDRESS counting one connection's bytes."""
        return int(self._c.call("probe.sink", address=address))

    def sink_result(self, port: int, timeout_s: float | None = None) -> tuple[int, float]:
        """What the sink on PORT counted; a sink that saw no end within ``timeout_s`` (or
        300 s) is dropped with an error."""
        extra = {} if timeout_s is None else {"timeout_s": timeout_s}
        r = self._c.call("probe.sink_result", port=port, **extra)
        return int(r["bytes"]), float(r["seconds"])

    def blast(self, address: str, port: int, nbytes: int, seconds: float | None = None) -> None:
        extra = {} if seconds is None else {"seconds": seconds}
        self._c.call("probe.blast", address=address, port=port, nbytes=nbytes, **extra)


class Agent:
    """A connected agent, as the controller sees it."""

    def __init__(self, client: AgentClient) -> None:
        self.client = client
        self.host = client.host
        self.outgoing = Outgoing(client)
        self.incoming = Incoming(client)
        self.net = Net(client)
        self.tunnel = Tunnel(client)
        self.probe = Probe(client)

    @property
    def round_trips(self) -> int:
        return self.client.round_trips

    def ping(self) -> Ping:
        return _make(Ping, self.client.call("ping"))

    def doctor(self) -> list[dict]:
        return self.client.call("doctor")

    def memory(self, name: str | None = None) -> Memory:
        return _make(Memory, self.client.call("host.memory", name=name))

    def cpuinfo(self) -> bytes:
        return base64.b64decode(self.client.call("host.cpuinfo"))

    def cpu_lacks(self, cpuinfo: bytes) -> str | None:
        """None if this host's CPU has every feature recorded in ``cpuinfo``; else why not."""
        return self.client.call("host.cpu_lacks", image_b64=base64.b64encode(cpuinfo).decode())

    def migration_status(self, name: str) -> MigrationStatus:
        raw = self.client.call("migration.status", name=name)
        return MigrationStatus(
            outgoing=SideStatus(**raw["outgoing"]) if raw.get("outgoing") else None,
            incoming=SideStatus(**raw["incoming"]) if raw.get("incoming") else None,
            container=raw["container"])

    def fault(self, action: str, name: str, **args: Any) -> None:
        """Tests: do the named fault here (cloudmig.agent.faults)."""
        self.client.call("fault", action=action, name=name, args=args)

    def close(self) -> None:
        self.client.close()
