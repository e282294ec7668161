"""The migration: a table of phases walked by a short loop, over agents it is handed.

    with Session(Inventory()) as session:
        report = Migration(session, "db", "h2", Mode.POSTCOPY, on_event=print).run()

Each phase of ``PHASES`` names what the source and the destination do, its undo, and the
state the migration reaches; phases marked ``frozen`` make the freeze window (the report's
``freeze_ms`` runs from the first one's start to the last one's end). A phase's undo is
pushed *before* its step runs (undo operations are idempotent and also clean up a step that
failed half way); once the destination resumed (state RESUMED) the stack is dropped: from
then on the container lives on the destination and failures are reported, never rolled back.
docs/design.md shows the same table (``phase_table_markdown``; a test keeps them equal).

The engine never dials a host or reads the inventory: the session (cloudmig.control.session)
hands it connected agents, brings tunnels up and records the move.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from typing import Callable

from cloudmig import errors
from cloudmig.agent.api import Agent, Dumped, Mode, Pin, Receiver
from cloudmig.control import layers, tunnels
from cloudmig.control.session import Session
from cloudmig.inventory import tunnel_key
from cloudmig.migration import events, parallel, preflight
from cloudmig.migration.faults import Fault, Faults
from cloudmig.migration.journal import Journal
from cloudmig.migration.report import Report

log = logging.getLogger(__name__)

LAZY_POLL_S = 0.2
LAZY_STALL_WARN_S = 10          # no page moved for this long: say so (tunnel broken?)
DUMP_EXIT_TIMEOUT_S = 60        # after the last page, the source's dump ends within this
FAULT_KILL_WAIT_S = 5           # a fault that kills an agent: its channel closes within this
POST_RESUME_ATTEMPTS = 3        # a phase after the resume, again after its agent was lost
SOURCE_LOST_S = 10              # no page, and the source's agent unreachable this long: lost
TUNNEL_CHECK_S = 2              # no page this long: are both ends of the tunnel there?


class State(enum.Enum):
    NEW = "new"
    CHECKED = "checked"          # preflight passed; nothing changed yet
    PREPARED = "prepared"        # destination made, writable layer pre-synced, pins set
    ARMED = "armed"              # runc and CRIU wait at their gates on both hosts
    FROZEN = "frozen"            # the source is frozen and dumped
    RESUMED = "resumed"          # the destination runs the container: no way back
    SWITCHED = "switched"        # clients reach the destination
    DRAINED = "drained"          # every lazy page arrived
    DONE = "done"
    ROLLED_BACK = "rolled_back"
    LOST = "lost"                # after the resume, its memory could no longer arrive


@dataclasses.dataclass(frozen=True)
class Phase:
    name: str
    source: str                  # what the source host does (agent ops, for the docs)
    destination: str             # what the destination host does
    step: Callable[["Migration"], None]
    reaches: State
    undo: Callable[["Migration"], None] | None = None
    undo_text: str = ""
    frozen: bool = False         # inside the freeze window
    modes: tuple[Mode, ...] = (Mode.POSTCOPY, Mode.STOPCOPY)


class Migration:
    def __init__(self, session: Session, name: str, destination: str, mode: Mode = Mode.POSTCOPY,
                 on_event: Callable[[events.Event], None] = events.ignore,
                 faults: Faults | None = None, source: str | None = None) -> None:
        self.session, self.name, self.mode, self.on_event = session, name, Mode(mode), on_event
        self.container = session.container(name)
        # ``source``: a recovered migration's (the inventory may name the destination already)
        self.src_name, self.dst_name = source or self.container.host, destination
        # an unknown destination is refused here; tunnel addresses are known before the tunnel
        self.src_addr = session.host(self.src_name).overlay_address or ""
        self.dst_addr = session.host(destination).overlay_address or ""
        self.faults = faults if faults is not None else Faults.from_env([p.name for p in PHASES])
        self.report = Report(container=name, source=self.src_name, destination=destination,
                             mode=self.mode.value)
        self.state = State.NEW
        self._undo: list[Phase] = []
        # learnt on the way (prepare): tunnel ends, the page server's port
        self.src_if = self.dst_if = ""
        self.ps_port = 0
        self.dst_if_by_host: dict[str, str] = {}     # forwarder host -> its tunnel on dst
        self.forwarder_ifs: dict[str, str] = {}      # forwarder host -> its tunnel to dst
        self.receivers: dict[str, Receiver] = {}
        self._pinned: set[Pin] = set()
        self._freeze_pins: list[Pin] = []
        self.journal: Journal | None = None

    LEARNT = ("src_if", "dst_if", "ps_port", "dst_if_by_host", "forwarder_ifs")

    def learnt(self) -> dict:
        """What the migration learnt on the way, as its journal keeps it for a recovery."""
        return {key: getattr(self, key) for key in self.LEARNT}

    def relearn(self, learnt: dict) -> None:
        for key in self.LEARNT:
            if key in learnt:
                setattr(self, key, learnt[key])

    # ------------------------------------------------------------------ agents
    @property
    def src(self) -> Agent:
        return self.session.agent(self.src_name)

    @property
    def dst(self) -> Agent:
        return self.session.agent(self.dst_name)

    @property
    def phases(self) -> list[Phase]:
        return [p for p in PHASES if self.mode in p.modes]

    # ------------------------------------------------------------------ the loop
    def run(self) -> Report:
        t0 = time.monotonic()
        t_freeze = trips_freeze = 0.0
        resumed = False
        self.journal = Journal.begin(self.name, self.src_name, self.dst_name, self.mode.value)
        try:
            for phase in self.phases:
                self.journal.update(phase=phase.name)
                self._fire(f"before-{phase.name}")
                if phase.frozen and not t_freeze:
                    t_freeze, trips_freeze = time.monotonic(), self.session.round_trips()
                if phase.undo is not None and not resumed:
                    self._undo.append(phase)
                try:
                    self._step(phase, resumed)
                except BaseException as exc:
                    if self._undo:
                        self._rollback(exc)
                    raise
                self.state = phase.reaches
                self.report.state = self.state.value
                self.journal.update(state=self.state.value, learnt=self.learnt())
                if self.state is State.RESUMED:
                    resumed = True
                    self._undo.clear()        # the point of no return
                    self.report.freeze_ms = (time.monotonic() - t_freeze) * 1000
                    self.report.control_round_trips_in_freeze = self.session.round_trips() - trips_freeze
                    self.on_event(events.Resumed(self.report.freeze_ms,
                                                 self.report.control_round_trips_in_freeze))
                self._fire(f"after-{phase.name}")
            self.report.ok = True
            self.journal.end(State.DONE.value)
            return self.report
        except BaseException as exc:
            self.report.error = str(exc) or type(exc).__name__
            # rolled back: finished; otherwise (after the resume, or a rollback that failed
            # half way) the journal stays unfinished for `cloudmig migrate --resume`
            self.journal.update(error=self.report.error)
            if self.state in (State.ROLLED_BACK, State.LOST):
                self.report.state = self.state.value
                self.journal.end(self.state.value, self.report.error)
            elif self.state in (State.NEW, State.CHECKED) and not self.report.rolled_back:
                self.journal.end("failed", self.report.error)        # nothing was changed
            raise
        finally:
            self.journal.release()
            self.report.total_ms = (time.monotonic() - t0) * 1000

    def _step(self, phase: Phase, resumed: bool) -> None:
        """Run one phase. After the resume there is no way back, so an agent lost on the way
        (it died, or its channel broke) is reconnected, or restarted by its host's provider,
        and the phase runs again: every step after the resume is idempotent on the agents,
        and a restarted agent takes its side over from its journal."""
        for attempt in range(POST_RESUME_ATTEMPTS):
            try:
                with self.report.phase(phase.name, self._phase_event):
                    phase.step(self)
                return
            except errors.AgentLost as exc:
                if not resumed or attempt == POST_RESUME_ATTEMPTS - 1:
                    raise
                self.on_event(events.Warning(f"{exc} Reconnecting; the migration goes on."))
                for host in (self.src_name, self.dst_name):
                    self.session.revive(host)

    def _phase_event(self, name: str, state: str) -> None:
        if state == "start":
            self.on_event(events.PhaseStarted(name))
        else:
            self.on_event(events.PhaseEnded(name, self.report.phases[-1].ms))

    def _fire(self, point: str) -> None:
        def on_side(fault: Fault) -> None:
            src = fault.side == "source"
            agent = self.session.revive(self.src_name if src else self.dst_name)
            action, args = fault.action, {}
            if action == "block-tcp-to":
                args = {"address": self.dst_addr if src else self.src_addr}
            elif action.startswith("wan-down-"):         # wan-down-SECONDS
                peer = self.session.host(self.dst_name if src else self.src_name)
                action, args = "wan-down", {"address": peer.public_address,
                                            "seconds": float(action.removeprefix("wan-down-"))}
            elif action == "kill-tunnel":
                t = self.session.data.tunnels.get(tunnel_key(self.src_name, self.dst_name))
                if t is None:
                    return                               # no tunnel yet: nothing to kill
                args = {"ifname": t.ifname_on(self.src_name if src else self.dst_name)}
            if action != "kill-agent":
                agent.fault(action, self.name, **args)
                return
            try:
                agent.fault(fault.action, self.name, **args)
            except errors.AgentError as exc:       # it may die before it answers
                log.warning("fault %s: %s", fault, exc)
            deadline = time.monotonic() + FAULT_KILL_WAIT_S     # dead before the phase begins
            while agent.client.alive and time.monotonic() < deadline:
                time.sleep(0.01)
        self.faults.fire(point, on_side)

    def _rollback(self, cause: BaseException) -> None:
        """Before the resume: the container goes on at the source, the destination is cleaned."""
        self.on_event(events.RollingBack(str(cause)))
        self.report.rolled_back = True
        problems = []
        while self._undo:
            phase = self._undo.pop()
            try:
                phase.undo(self)
            except errors.CloudmigError as exc:
                problems.append(f"undoing {phase.name} ({phase.undo_text}) failed: {exc}")
        if problems:
            log.error("rollback incomplete: %s", "; ".join(problems))
            self.on_event(events.Warning("rollback incomplete: " + "; ".join(problems)
                                         + f"; finish it with: cloudmig migrate --resume {self.name}"))
            return
        self.state = State.ROLLED_BACK
        self.report.state = self.state.value

    # ------------------------------------------------------------------ before the freeze
    def _preflight(self) -> None:
        if self.dst_name == self.src_name:
            raise errors.PreflightError(f"Container {self.name} already runs on {self.src_name}.",
                                        hint="Pick another destination host.")
        dst_rec = self.session.host(self.dst_name)
        if dst_rec.state != "ready":
            raise errors.PreflightError(f"Host {self.dst_name} is {dst_rec.state}, not ready.")
        # an agent that died since it was last used is restarted (lab) before anything begins
        src, dst = self.session.revive(self.src_name), self.session.revive(self.dst_name)
        # what each host says of itself, asked of both at once: one round trip, not seven
        src_checks, dst_checks, cpuinfo, src_ping, dst_ping, src_mem, dst_mem = parallel.at_once(
            src.doctor, dst.doctor, src.cpuinfo, src.ping, dst.ping,
            lambda: src.memory(self.name), dst.memory)
        preflight.check_host(self.src_name, src_checks, self.mode.value)
        preflight.check_host(self.dst_name, dst_checks, self.mode.value)
        lacks = dst.cpu_lacks(cpuinfo)
        if lacks:
            raise errors.PreflightError(
                f"Host {self.dst_name}'s CPU lacks features the container may use: {lacks}",
                hint="Pick a destination with the same or a newer CPU.")
        preflight.check_host_image(self.container.image, self.name, self.src_name, src_ping.root_id,
                                   self.dst_name, dst_ping.root_id)
        preflight.check_memory(self.dst_name, src_mem, dst_mem, self.mode.value)
        preflight.check_ports(self.session.data, self.container, self.dst_name)
        self.report.memory_bytes = src_mem.rss

    def _prepare(self) -> None:
        c = self.container
        t = self.session.tunnel(self.src_name, self.dst_name)
        self.src_if, self.dst_if = t.ifname_on(self.src_name), t.ifname_on(self.dst_name)
        src, dst = self.src, self.dst
        parallel.at_once(lambda: src.tunnel.warm(self.src_if, self.dst_addr),
                         lambda: dst.tunnel.warm(self.dst_if, self.src_addr))
        self._send_layers()
        parallel.at_once(
            lambda: dst.incoming.prepare(self.name, self.mode, image=c.image, command=c.command, env=c.env,
                                         service_ip=c.service_ip, memory_limit_bytes=c.memory_limit_bytes,
                                         layers=c.layers),
            self._probe_page_server_port)
        rx = dst.incoming.receive(self.name, "upper", self.dst_addr)
        self.report.fs_bytes += src.outgoing.presync(self.name, self.mode, rx, self.dst_addr).bytes
        dst.incoming.receive_wait(self.name, "upper")
        # reply paths on the destination: connections that come in through a tunnel are
        # answered through it (restored ones are pinned). The connections of now are pinned
        # before the freeze; the freeze pins only those that came since (the source lists
        # them while CRIU dumps)
        _, connections = parallel.at_once(lambda: dst.net.track_tunnel(self.dst_if),
                                          lambda: src.net.connections(c.service_ip))
        self.dst_if_by_host = {self.src_name: self.dst_if}
        self._prepare_forwarders()
        self._pin(dst, connections)

    def _probe_page_server_port(self) -> None:
        """The page server's port, proven reachable from the destination before the freeze."""
        src, dst = self.src, self.dst
        self.ps_port = src.probe.free_port(self.src_addr)
        src.probe.listen(self.src_addr, self.ps_port)
        try:
            dst.probe.connect(self.src_addr, self.ps_port)
        finally:
            src.probe.close(self.src_addr, self.ps_port)

    def _send_layers(self) -> None:
        """The image layers the destination lacks, from the source through the tunnel."""
        self.report.layers_bytes = layers.copy_between(self.src.client, self.dst.client,
                                                       self.container.layers, self.dst_addr)

    def _prepare_forwarders(self) -> None:
        """Hosts the container lived on before keep forwarding to it: give each a (warm)
        tunnel to the new home now, so the switch only changes a route."""
        for fwd in self.container.forwards:
            if fwd.host in (self.dst_name, self.src_name):
                continue
            t = self.session.tunnel(fwd.host, self.dst_name)
            f_if, d_if = t.ifname_on(fwd.host), t.ifname_on(self.dst_name)
            self.dst.net.track_tunnel(d_if)
            self.forwarder_ifs[fwd.host] = f_if
            self.dst_if_by_host[fwd.host] = d_if

    def _pin(self, dst: Agent, connections) -> None:
        """Each TCP connection goes on answering through the host whose NAT it belongs to: the
        source itself, or the forwarder whose tunnel it came in by. Pinned on the destination
        where not pinned yet (inert until the switch: nothing reaches the service IP there)."""
        new = self._new_pins(connections)
        if new:
            dst.net.pin_replies(self.container.service_ip, new)
            self._pinned.update(new)

    def _new_pins(self, connections) -> list[Pin]:
        """A connection the destination itself NATs (a move back to a host that forwarded)
        needs none: its conntrack answers it directly, and a pin would send it into the tunnel."""
        peers = self.session.tunnel_peers(self.src_name)
        pins = []
        for conn in connections:
            owner = peers.get(conn.via_tunnel or "", self.src_name)
            if owner != self.dst_name:
                pins.append(Pin(client_ip=conn.client_ip, client_port=conn.client_port,
                                service_port=conn.service_port,
                                tunnel_ifname=self.dst_if_by_host.get(owner, self.dst_if)))
        return [p for p in pins if p not in self._pinned]

    def _arm(self) -> None:
        """runc and CRIU start on both sides and wait at their gates, and the destination
        listens for the freeze's transfers, which the source connects to now (their
        handshakes, a WAN's round trip, are not in the freeze): none of it inside the freeze."""
        # post-copy: "flags", the source's check of the mappings' flags CRIU took from a copy
        # of smaps (cloudmig.runtime.smaps_ahead), which the restore awaits before the unlock
        kinds = ("upper", "images") + (("flags",) if self.mode.lazy else ())
        self.receivers = {what: self.dst.incoming.receive(self.name, what, self.dst_addr) for what in kinds}
        # post-copy: the pages it will likely touch first go ahead now (cloudmig.runtime.hot_pages)
        hot = self.dst.incoming.receive(self.name, "hot", self.dst_addr) if self.mode.lazy else None
        descriptors = self.src.outgoing.arm(self.name, self.src_addr, self.ps_port, self.dst_addr,
                                            self.receivers, hot=hot)
        self.dst.incoming.arm(self.name, descriptors, self.src_addr, self.ps_port)

    def _hold(self) -> None:
        pub = self.session.host(self.src_name).public_address or ""
        self.src.outgoing.hold(self.name, self.container.service_ip,
                               [(pub, p.host_port, p.proto) for p in self.container.ports], not_from=self.src_if)

    # ------------------------------------------------------------------ the freeze
    def _dump(self) -> None:
        """Lock, freeze, dump; in the same call the source sends the writable layer's last
        changes and CRIU's images, at once, into the receivers the destination opened before
        the freeze (its restore waits for them and says whether everything came)."""
        dumped: Dumped = self.src.outgoing.checkpoint(self.name, self.container.service_ip, self.dst_addr,
                                                      self.receivers["upper"], self.receivers["images"],
                                                      self.receivers.get("flags"))
        breakdown = self.report.freeze_breakdown_ms
        breakdown["dump"] = self.report.phases[-1].ms
        for k, v in dumped.steps_ms.items():
            breakdown[k if k in ("fs_sync", "images") else f"dump.{k}"] = v
        self.report.fs_bytes += dumped.upper.bytes
        self.report.images_bytes = dumped.images.bytes
        self.report.hot_pages = dict(dumped.hot)
        # connections that came since the prepare: pinned by the destination's restore call,
        # beside runc and CRIU, before it unlocks the container (a reply the restored copy sent
        # before its pin would leave by the wrong way: seen as a client's connection reset)
        self._freeze_pins = self._new_pins(dumped.connections)

    def _restore(self) -> None:
        restored = self.dst.incoming.restore(self.name, self.src_addr, self.ps_port, self.container.service_ip,
                                             self._freeze_pins)
        self._pinned.update(self._freeze_pins)
        breakdown = self.report.freeze_breakdown_ms
        breakdown["restore"] = self.report.phases[-1].ms
        breakdown["restore.agent"] = restored.restore_ms
        breakdown.update({f"restore.{k}": v for k, v in restored.steps_ms.items()})
        if self.report.hot_pages:
            self.report.hot_pages["installed"] = restored.hot_installed
        self.report.smaps = dict(restored.smaps)

    def _timed(self, key: str, fn: Callable):
        t = time.monotonic()
        try:
            return fn()
        finally:
            self.report.freeze_breakdown_ms[key] = (time.monotonic() - t) * 1000

    # ------------------------------------------------------------------ undo
    def _abort_destination(self) -> None:
        self.session.revive(self.dst_name).incoming.abort(self.name, self.container.service_ip)

    def _release_hold(self) -> None:
        """Rollback: the held packets reach the source's container, running again by now."""
        self.report.held_packets = self.session.revive(self.src_name).outgoing.release_hold(self.name)

    def _disarm_source(self) -> None:
        self.session.revive(self.src_name).outgoing.disarm(self.name)

    def _resume_source(self) -> None:
        self.session.revive(self.src_name).outgoing.rollback(self.name, self.mode,
                                                             self.container.service_ip)

    # ------------------------------------------------------------------ after the resume
    def _switch(self) -> None:
        c, src, dst = self.container, self.src, self.dst
        # the destination routed and unlocked the container before its restore returned, so
        # the source sends the service into the tunnel and lets the held packets follow at
        # once; then the destination records the switch
        self.report.held_packets = self._timed(
            "switch.over", lambda: src.outgoing.switch_over(self.name, c.service_ip, self.src_if))
        dst.incoming.go_live(self.name, c.service_ip)
        self._publish()

    def _publish(self) -> None:
        """The destination publishes the ports, earlier homes route to it, the record moves."""
        c, dst = self.container, self.dst
        dst_pub = self.session.host(self.dst_name).public_address or ""
        for p in c.ports:
            dst.net.publish(owner=self.name, public_ip=dst_pub, host_port=p.host_port,
                            service_ip=c.service_ip, container_port=p.container_port, proto=p.proto)
        for host, f_if in self.forwarder_ifs.items():
            self.session.agent(host).net.route_service(c.service_ip, ifname=f_if)
        forwards = self.session.record_move(self.name, self.src_name, self.dst_name)
        self.on_event(events.Switched(forwards))

    def _lazy(self) -> None:
        dst = self.dst
        t0 = last_change = time.monotonic()
        last_copied = -1
        stalled_since: float | None = None
        warned = tunnel_checked = 0.0
        self._src_unreachable_since: float | None = None
        while True:
            # answered at once when the transfer ends, else after LAZY_POLL_S: the end is
            # seen when it happens, not up to a poll later
            prog = dst.incoming.lazy_progress(self.name, wait_s=LAZY_POLL_S)
            if prog.lost:
                self._lost(prog.lost)
            self.on_event(events.LazyMoved(prog, time.monotonic() - t0))
            if prog.done:
                break
            now = time.monotonic()
            if prog.copied_pages != last_copied:
                if stalled_since is not None:
                    self.on_event(events.Warning(f"pages flow again after {now - stalled_since:.1f} s"))
                last_copied, last_change, stalled_since, warned = prog.copied_pages, now, None, 0.0
            elif now - last_change > TUNNEL_CHECK_S and now - tunnel_checked > TUNNEL_CHECK_S:
                tunnel_checked = now
                self._check_tunnel()
            if prog.copied_pages == last_copied and now - last_change > LAZY_STALL_WARN_S:
                stalled_since = stalled_since or last_change
                if now - warned > LAZY_STALL_WARN_S:
                    warned = now
                    self.on_event(events.Warning(
                        f"stalled: no page for {now - last_change:.0f} s; the source keeps serving "
                        "them until the transfer completes (check `cloudmig tunnel status`)"))
                self._check_source(prog, now - last_change)
        final = dst.incoming.finish(self.name)
        if final.rc not in (0, None):
            raise errors.LazyPagesError(
                f"The lazy-pages daemon on {self.dst_name} exited with {final.rc}; the "
                f"container's memory may be incomplete. The source {self.src_name} keeps its copy.",
                hint=f"Inspect the migration directory on {self.dst_name}.")
        self.report.lazy_pages = final.lazy_pages
        self.report.faulted_pages = final.faulted_pages
        self.report.pushed_pages = final.pushed_pages
        self.report.page_size = final.page_size

    def _check_tunnel(self) -> None:
        """No page for a while: an end of the tunnel that vanished (its wireguard-go died) is
        brought back, with the routes through it."""
        rec = self.session.data.tunnels[tunnel_key(self.src_name, self.dst_name)]
        hosts = {h: self.session.host(h) for h in (rec.a, rec.b)}
        repaired = tunnels.repair(rec, hosts[rec.a], hosts[rec.b], self.session)
        if repaired:
            self.on_event(events.Warning(f"the tunnel's end on {', '.join(repaired)} was gone; brought back"))

    def _check_source(self, prog, stalled_s: float) -> None:
        """While no page arrives: is the source still there? Its agent unreachable (and not
        restartable) for SOURCE_LOST_S means its host is gone, and the pages with it."""
        try:
            self.session.revive(self.src_name).ping()
            self._src_unreachable_since = None
        except errors.AgentError as exc:
            now = time.monotonic()
            self._src_unreachable_since = self._src_unreachable_since or now
            if now - self._src_unreachable_since >= SOURCE_LOST_S:
                self._lost(f"the source host {self.src_name} is unreachable ({exc}) and no page "
                           f"arrived for {stalled_s:.0f} s; "
                           f"{prog.lazy_pages - prog.copied_pages} of {prog.lazy_pages} pages never arrived",
                           source_gone=True)

    def _lost(self, why: str, source_gone: bool = False) -> None:
        """The rest of the memory cannot arrive: the destination's copy is stopped and removed
        (the agent froze it already); the source's frozen copy, if its host still has it,
        runs again as it was at the freeze. Raises MigrationLost saying what was lost."""
        c = self.container
        self.on_event(events.Warning(f"memory lost on {self.dst_name}: {why}"))
        self.session.revive(self.dst_name).incoming.drop(self.name, c.service_ip)
        since = time.time() - self.report.phases[-1].start
        taken_back, problem = False, ""
        self.report.lost = why
        if not source_gone:
            try:
                self.session.revive(self.src_name).outgoing.take_back(self.name, c.service_ip)
                taken_back = True
            except errors.CloudmigError as exc:
                problem = str(exc)
        lost = f"The copy of {self.name} on {self.dst_name} lost its memory before all of it arrived ({why}); it was stopped and removed."
        if taken_back:
            for host in self.forwarder_ifs:        # earlier homes forward to the source again
                t = self.session.tunnel(host, self.src_name)
                self.session.agent(host).net.route_service(
                    c.service_ip, ifname=t.ifname_on(host))
            self.session.record_back(self.name, self.src_name, self.dst_name)
            self.state, self.report.rolled_back = State.ROLLED_BACK, True
            raise errors.MigrationLost(
                f"{lost} {self.src_name} runs {self.name} again as it was at the freeze: what it did "
                f"on {self.dst_name} in the last {since:.1f} s, and its clients' connections, are lost.",
                hint="Choose --mode stopcopy for containers that must never lose work (README, 'Modes').")
        if not source_gone:          # what may be left of it there (a dead container) goes
            try:
                self.session.revive(self.src_name).outgoing.finish(self.name, c.service_ip)
            except errors.CloudmigError as exc:
                log.warning("cleaning %s's remains on %s: %s", self.name, self.src_name, exc)
        self.session.record_lost(self.name, self.dst_name)
        self.state = State.LOST
        raise errors.MigrationLost(
            f"{lost} Its source {self.src_name} could not take it back"
            + (f" ({problem})" if problem else " (gone)") + f": {self.name} is lost.",
            hint=f"Run it again from its image: cloudmig rm {self.name}; cloudmig run ...")

    def _cleanup(self) -> None:
        src = self.src
        end = src.outgoing.wait_dump(self.name, timeout_s=DUMP_EXIT_TIMEOUT_S if self.mode.lazy else None)
        self.report.dumped_pages = int(end.stats.get("pages_written", 0))
        if not self.mode.lazy:
            self.dst.incoming.finish(self.name)
        src.outgoing.finish(self.name, self.container.service_ip)


PHASES: tuple[Phase, ...] = (
    Phase("preflight", "doctor, CPU features, memory", "doctor, CPU check, free memory and ports",
          Migration._preflight, State.CHECKED),
    Phase("prepare", "tunnel; layers and writable layer sent; connections listed",
          "tunnel; netns, bundle (locked); receives; reply pins", Migration._prepare, State.PREPARED,
          undo=Migration._abort_destination, undo_text="incoming.abort: destination cleaned"),
    Phase("arm", "runc checkpoint + CRIU wait at their gate; the freeze's transfers connected; "
          "network lock in place, dormant; (post-copy) the pages found from the stacks sent ahead, "
          "the mappings' flags copied from smaps",
          "receivers open; runc restore + CRIU wait; lazy-pages daemon listens; the pages sent "
          "ahead made a parent image set",
          Migration._arm, State.ARMED,
          undo=Migration._disarm_source, undo_text="outgoing.disarm: the armed dump and lock called off"),
    Phase("hold", "the service's packets queued in the kernel (NFQUEUE), no longer dropped", "-",
          Migration._hold, State.ARMED,
          undo=Migration._release_hold, undo_text="outgoing.release_hold: held packets reach the source"),
    Phase("dump", "lock, freeze, CRIU dump (page server up; the flags from the copy if the "
          "mappings are the same) while the pages sent ahead are judged; writable layer's changes "
          "and CRIU images with that verdict sent (one call); then the copied flags checked",
          "received; pins of new connections",
          Migration._dump, State.FROZEN, frozen=True,
          undo=Migration._resume_source, undo_text="outgoing.rollback: thawed or restored, unlocked"),
    Phase("restore", "serves pages", "pages sent ahead and known at the freeze marked in the parent; "
          "mount, CRIU restore; the source's check of the copied flags awaited; then routed and unlocked",
          Migration._restore,
          State.RESUMED, frozen=True),
    Phase("switch", "once the destination is live: service IP into the tunnel, held packets let go, "
          "source copy isolated (one call)", "switch recorded; ports published",
          Migration._switch, State.SWITCHED),
    Phase("lazy", "page server", "faulted and pushed pages until the last", Migration._lazy,
          State.DRAINED, modes=(Mode.POSTCOPY,)),
    Phase("cleanup", "dump ends; container removed, ports kept (forwarding)", "migration files removed",
          Migration._cleanup, State.DONE),
)


def phase_table_markdown() -> str:
    """The phase table as docs/design.md shows it."""
    rows = ["| phase | source | destination | undo (before the resume) | reaches | modes |",
            "|---|---|---|---|---|---|"]
    for p in PHASES:
        modes = "both" if len(p.modes) == 2 else ", ".join(m.value for m in p.modes)
        name = f"**{p.name}** (frozen)" if p.frozen else f"**{p.name}**"
        rows.append(f"| {name} | {p.source} | {p.destination} | {p.undo_text or '-'} | "
                    f"{p.reaches.name} | {modes} |")
    return "\n".join(rows) + "\n"
