"""The controller's connections for one piece of work: hosts resolved once, one agent channel
per host dialled once and kept, tunnels brought up through those channels.

    with Session(Inventory()) as s:
        src = s.agent("h1")                  # cloudmig.agent.api.Agent, connected
        t = s.tunnel("h1", "h2")             # up (idempotent), warm
        s.record_move("db", "h1", "h2")      # the inventory learns where it lives now

Over SSH a channel is one long-lived SSH session relaying the agent protocol, which carries
concurrent calls (requests carry ids): no SSH handshake happens after the first call to a
host, and none inside a migration's freeze (docs/design.md, "One channel per host").
"""

from __future__ import annotations

import logging
import threading

from cloudmig import errors
from cloudmig.agent import api, dial
from cloudmig.inventory import ContainerRecord, ForwardRecord, HostRecord, Inventory, InventoryData, \
    PortMapping, TunnelRecord

log = logging.getLogger(__name__)


class Session:
    def __init__(self, inv: Inventory | None = None) -> None:
        self.inv = inv or Inventory()
        self.data: InventoryData = self.inv.read()
        self._agents: dict[str, api.Agent] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ hosts and agents
    def host(self, name: str) -> HostRecord:
        return self.data.host(name)

    def container(self, name: str) -> ContainerRecord:
        return self.data.container(name)

    def agent(self, host: str) -> api.Agent:
        """The host's agent on its channel, dialled on first use (and again if it broke)."""
        with self._lock:
            agent = self._agents.get(host)
            if agent is None or not agent.client.alive:
                if agent is not None:
                    agent.close()
                agent = api.Agent(dial.connect(self.host(host)))
                self._agents[host] = agent
            return agent

    def revive(self, host: str) -> api.Agent:
        """The host's agent again after its channel broke: redialled, or restarted by its
        provider if it died (lab hosts can; an agent over SSH is restarted by `host add`)."""
        try:
            return self.agent(host)
        except errors.AgentError:
            from cloudmig import providers
            record = self.host(host)
            restart = getattr(providers.load(record.provider), "restart_agent", None)
            if restart is None:
                raise
            log.warning("restarting the agent of %s", host)
            record = restart(record)
            with self.inv.transaction() as data:
                data.hosts[host] = record
            self.data.hosts[host] = record
            return self.agent(host)

    def round_trips(self) -> int:
        """Calls made so far on every channel of this session."""
        return sum(a.round_trips for a in list(self._agents.values()))

    # ------------------------------------------------------------------ tunnels
    def tunnel(self, a: str, b: str) -> TunnelRecord:
        """The tunnel between ``a`` and ``b``, brought up if it is not (keys made on each host)."""
        from cloudmig.control import tunnels
        rec = tunnels.up(a, b, self.inv, exist_ok=True, session=self)
        self.data = self.inv.read()
        return rec

    def tunnel_peers(self, host: str) -> dict[str, str]:
        """Each tunnel interface on ``host``, and the host at its other end."""
        peers = {}
        for t in self.data.tunnels.values():
            if t.a == host:
                peers[t.iface_a] = t.b
            elif t.b == host:
                peers[t.iface_b] = t.a
        return peers

    # ------------------------------------------------------------------ the record
    def record_move(self, name: str, source: str, destination: str) -> list[str]:
        """``name`` lives on ``destination`` now; ``source`` forwards its published ports.
        Returns the hosts that forward to it."""
        with self.inv.transaction() as data:
            rec = data.containers[name]
            forwards = {f.host: f for f in rec.forwards if f.host != destination}
            if rec.ports:
                forwards[source] = ForwardRecord(
                    host=source, ports=[PortMapping(**p.model_dump()) for p in rec.ports])
            rec.forwards = list(forwards.values())
            rec.host = destination
            rec.state = "running"
            self.data = data.model_copy(deep=True)
        return [f.host for f in self.data.container(name).forwards]

    def record_back(self, name: str, source: str, destination: str) -> None:
        """A move undone after its switch (the destination's copy was lost): ``name`` lives on
        ``source`` again, which no longer forwards to it."""
        with self.inv.transaction() as data:
            rec = data.containers[name]
            rec.forwards = [f for f in rec.forwards if f.host != source]
            rec.host, rec.state = source, "running"
            self.data = data.model_copy(deep=True)

    def record_lost(self, name: str, host: str) -> None:
        """``name`` is lost (its memory could not be moved): `cloudmig ps` says so until `rm`."""
        with self.inv.transaction() as data:
            rec = data.containers[name]
            rec.host, rec.state = host, "lost"
            self.data = data.model_copy(deep=True)

    # ------------------------------------------------------------------ the end
    def close(self) -> None:
        with self._lock:
            agents, self._agents = self._agents, {}
        for agent in agents.values():
            agent.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
