"""The migration state machine, run by the controller through the two hosts' agents.

    report = Migration(inv, "db", "h2", mode="postcopy", on_event=print).run()

Phases (each recorded in the report with its timestamps):

    preflight -> prepare -> freeze (dump) -> sync -> restore -> switch -> lazy -> cleanup

Failure semantics: anything that fails before the destination resumed rolls back (the
container resumes on the source as it was; the destination is cleaned up) and raises. After
the resume, the container's memory lives on two hosts until every page arrived: errors there
are reported loudly and the source is never cleaned up before the last page.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import subprocess
import time
from typing import Any, Callable

from cloudmig import errors
from cloudmig.control import agents, tunnels
from cloudmig.inventory import ForwardRecord, Inventory, PortMapping
from cloudmig.migration import preflight
from cloudmig.migration.report import Report

log = logging.getLogger(__name__)

LAZY_POLL_S = 0.2
LAZY_STALL_WARN_S = 10          # no page moved for this long: say so (tunnel broken?)
DUMP_EXIT_TIMEOUT_S = 60        # after the last page, the source's dump ends within this
FAULT_HOOKS_ENV = "CLOUDMIG_FAULT_HOOKS"   # tests: "phase=shell command;..." run before a phase

Event = Callable[..., None]


def _no_event(kind: str, **data: Any) -> None:
    pass


def _pin_key(pin: dict) -> tuple:
    return (pin["client_ip"], pin["client_port"], pin["service_port"], pin["tunnel_ifname"])


def _fault_hook(phase: str) -> str | None:
    """Failure injection for tests: the shell command given for ``phase``, if any."""
    for item in filter(None, os.environ.get(FAULT_HOOKS_ENV, "").split(";;")):
        name, _, command = item.partition("=")
        if name.strip() == phase:
            return command
    return None


class Migration:
    def __init__(self, inv: Inventory, name: str, destination: str, mode: str = "postcopy",
                 on_event: Event = _no_event) -> None:
        self.inv, self.name, self.dst_name, self.mode = inv, name, destination, mode
        self.on_event = on_event
        data = inv.read()
        self.container = data.container(name)
        self.src_name = self.container.host
        self.report = Report(container=name, source=self.src_name, destination=destination, mode=mode)
        self._resumed = False
        self._dumped = False
        self._armed = False
        self._pinned: set[tuple] = set()
        self._dst_touched = False

    # ------------------------------------------------------------------ helpers
    def _phase(self, name: str):
        command = _fault_hook(name)
        if command is not None:
            log.warning("fault hook before %s: %s", name, command)
            subprocess.run(["sh", "-c", command], env={**os.environ, **self._hook_env()}, check=False)
        return self.report.phase(name, lambda n, s: self.on_event("phase", name=n, state=s))

    def _hook_env(self) -> dict[str, str]:
        data = self.inv.read()
        env = {"CM_CONTAINER": self.name, "CM_SRC": self.src_name, "CM_DST": self.dst_name}
        for role, host in (("SRC", self.src_name), ("DST", self.dst_name)):
            h = data.hosts.get(host)
            if h:
                env[f"CM_{role}_AGENT_PID"] = h.agent.get("pid", "")
                env[f"CM_{role}_NETNS"] = h.resources.get("netns", "")
                env[f"CM_{role}_OVERLAY"] = h.overlay_address or ""
        return env

    def _agent(self, host: str):
        return agents.connect(self.inv.read().host(host))

    # ------------------------------------------------------------------ run
    def run(self) -> Report:
        t0 = time.monotonic()
        try:
            self._preflight()
            try:
                self._prepare()
                self._freeze_and_move()
            except BaseException as exc:
                self._rollback(exc)
                raise
            self._switch()
            self._lazy_transfer()
            self._cleanup_source()
            self.report.ok = True
            return self.report
        except errors.CloudmigError as exc:
            self.report.error = str(exc)
            raise
        finally:
            self.report.total_ms = (time.monotonic() - t0) * 1000

    # ------------------------------------------------------------------ phases
    def _preflight(self) -> None:
        with self._phase("preflight"):
            if self.dst_name == self.src_name:
                raise errors.PreflightError(f"Container {self.name} already runs on {self.src_name}.",
                                            hint="Pick another destination host.")
            data = self.inv.read()
            dst = data.host(self.dst_name)
            if dst.state != "ready":
                raise errors.PreflightError(f"Host {self.dst_name} is {dst.state}, not ready.")
            with self._agent(self.src_name) as src, self._agent(self.dst_name) as dsta:
                src_checks = preflight.check_host(self.src_name, src.call("doctor"), self.mode)
                preflight.check_mode(self.mode, src_checks)
                preflight.check_host(self.dst_name, dsta.call("doctor"), self.mode)
                cpu = dsta.call("mig.cpuinfo_check", image_b64=src.call("mig.cpuinfo_dump"))
                if not cpu["ok"]:
                    raise errors.PreflightError(
                        f"Host {self.dst_name}'s CPU lacks features the container may use: {cpu['detail']}",
                        hint="Pick a destination with the same or a newer CPU.")
                src_mem = src.call("mig.memory", name=self.name)
                dst_mem = dsta.call("mig.memory")
            preflight.check_memory(self.dst_name, src_mem, dst_mem, self.mode)
            preflight.check_ports(data, self.container, self.dst_name)
            self.report.memory_bytes = src_mem["rss"]

    def _prepare(self) -> None:
        c = self.container
        with self._phase("prepare"):
            self.tunnel = tunnels.up(self.src_name, self.dst_name, self.inv, exist_ok=True)
            self.src_if = self.tunnel.iface_a if self.tunnel.a == self.src_name else self.tunnel.iface_b
            self.dst_if = self.tunnel.iface_b if self.tunnel.a == self.src_name else self.tunnel.iface_a
            data = self.inv.read()
            self.src_addr = data.host(self.src_name).overlay_address
            self.dst_addr = data.host(self.dst_name).overlay_address
            with self._agent(self.src_name) as src, self._agent(self.dst_name) as dst:
                src.call("tunnel.warm", ifname=self.src_if, peer_address=self.dst_addr)
                dst.call("tunnel.warm", ifname=self.dst_if, peer_address=self.src_addr)
                self._dst_touched = True
                dst.call("mig.dst_prepare", name=self.name, image=c.image, command=c.command,
                         env=c.env, service_ip=c.service_ip, memory_limit_bytes=c.memory_limit_bytes)
                # the page server's port, proven reachable from the destination before the freeze
                self.ps_port = src.call("mig.free_port", address=self.src_addr)
                src.call("mig.probe_listen", address=self.src_addr, port=self.ps_port)
                try:
                    dst.call("mig.probe_connect", address=self.src_addr, port=self.ps_port)
                finally:
                    src.call("mig.probe_close", address=self.src_addr, port=self.ps_port)
                self.report.fs_bytes += self._send(src, dst, "upper", "mig.src_presync")
                # reply paths on the destination: connections that come in through a tunnel
                # are answered through it (restored ones are pinned at the freeze)
                dst.call("net.track_tunnel", ifname=self.dst_if)
                # runc and CRIU start on both sides now and wait at their gates, and the
                # destination listens for the freeze's transfers: none of it inside the freeze
                self._armed = True
                armed = src.call("mig.src_dump_arm", name=self.name, mode=self.mode,
                                 address=self.src_addr, port=self.ps_port)
                dst.call("mig.dst_restore_arm", name=self.name, mode=self.mode,
                         descriptors=armed["descriptors"])
                self.receivers = {what: dst.call("mig.dst_receive", name=self.name, what=what,
                                                 bind_address=self.dst_addr)
                                  for what in ("upper", "images")}
            self.dst_if_by_host = {self.src_name: self.dst_if}
            self._prepare_forwarders()
            # the connections of now, pinned before the freeze; the freeze pins only those
            # that came since (the source lists them while CRIU dumps)
            with self._agent(self.src_name) as src, self._agent(self.dst_name) as dst:
                self._pin(dst, self._pins(src.call("net.connections", service_ip=c.service_ip)))

    def _pins(self, connections: list[dict]) -> list[dict]:
        """Each TCP connection the container carries goes on answering through the host whose
        NAT it belongs to: the source itself, or the forwarder whose tunnel it came in by."""
        peer_of_iface = {}
        for t in self.inv.read().tunnels.values():
            if t.a == self.src_name:
                peer_of_iface[t.iface_a] = t.b
            elif t.b == self.src_name:
                peer_of_iface[t.iface_b] = t.a
        pins = []
        for conn in connections:
            owner = peer_of_iface.get(conn["via_tunnel"] or "", self.src_name)
            pins.append({"client_ip": conn["client_ip"], "client_port": conn["client_port"],
                         "service_port": conn["service_port"],
                         "tunnel_ifname": self.dst_if_by_host.get(owner, self.dst_if)})
        return pins

    def _pin(self, dst, pins: list[dict]) -> None:
        """Pin on the destination what is not pinned there yet (pins are inert until the
        switch: nothing reaches the service IP there before it)."""
        new = [p for p in pins if _pin_key(p) not in self._pinned]
        if new:
            dst.call("net.pin_replies", service_ip=self.container.service_ip, connections=new)
            self._pinned.update(_pin_key(p) for p in new)

    def _send(self, src, dst, what: str, op: str) -> int:
        rx = dst.call("mig.dst_receive", name=self.name, what=what, bind_address=self.dst_addr)
        sent = src.call(op, name=self.name, address=self.dst_addr, port=rx["port"], token=rx["token"])
        dst.call("mig.dst_receive_wait", name=self.name, what=what)
        return int(sent["bytes"])

    def _push(self, src, what: str, op: str) -> int:
        """Send into the receiver the destination opened before the freeze."""
        rx = self.receivers[what]
        sent = src.call(op, name=self.name, address=self.dst_addr, port=rx["port"], token=rx["token"])
        return int(sent["bytes"])

    def _timed(self, key: str, fn: Callable[[], Any]) -> Any:
        t = time.monotonic()
        try:
            return fn()
        finally:
            self.report.freeze_breakdown_ms[key] = (time.monotonic() - t) * 1000

    def _freeze_and_move(self) -> None:
        breakdown = self.report.freeze_breakdown_ms
        with contextlib.ExitStack() as stack:
            # every agent connection the freeze uses is opened before it (over SSH each one
            # is a new session): the main pair, one per transfer, and a pair for the pins
            src, dst, src_fs, src_images, pins_dst = (
                stack.enter_context(self._agent(h)) for h in (
                    self.src_name, self.dst_name, self.src_name, self.src_name, self.dst_name))
            t_freeze = time.monotonic()
            with self._phase("freeze") as ph:
                self._dumped = True
                dump = src.call("mig.src_checkpoint", name=self.name, mode=self.mode,
                                address=self.src_addr, port=self.ps_port,
                                service_ip=self.container.service_ip)
                breakdown["dump"] = ph.ms
                breakdown.update({f"dump.{k}": v for k, v in dump.get("steps_ms", {}).items()})
            # three independent moves, each on its own connections: the writable layer's last
            # changes and CRIU's images (into receivers the destination opened before the
            # freeze; its restore waits for them), and the pins of connections that came
            # since the prepare, which only need to be in place before the switch
            with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
                pins = pool.submit(self._timed, "pins",
                                   lambda: self._pin(pins_dst, self._pins(dump["connections"])))
                with self._phase("sync"):
                    fs = pool.submit(self._timed, "fs_sync", lambda: self._push(src_fs, "upper", "mig.src_final_sync"))
                    images = pool.submit(self._timed, "images",
                                         lambda: self._push(src_images, "images", "mig.src_send_images"))
                    self.report.fs_bytes += fs.result()
                    self.report.images_bytes = images.result()
                with self._phase("restore") as ph:
                    restored = dst.call("mig.dst_restore", name=self.name, mode=self.mode,
                                        page_server=self.src_addr, port=self.ps_port)
                    breakdown["restore"] = ph.ms
                    breakdown["restore.agent"] = restored.get("restore_ms", 0.0)
                    breakdown.update({f"restore.{k}": v for k, v in restored.get("steps_ms", {}).items()})
                t_resumed = time.monotonic()
                pins.result()
            self._resumed = True
            self.report.freeze_ms = (t_resumed - t_freeze) * 1000
            self.on_event("resumed", freeze_ms=self.report.freeze_ms, dump=dump)

    def _switch(self) -> None:
        c = self.container
        with self._phase("switch"):
            with self._agent(self.src_name) as src, self._agent(self.dst_name) as dst:
                # clients of the source's public address now reach the destination: both
                # hosts switch at once (a packet that beats the destination's unlock is
                # dropped and retransmitted, as during the freeze)
                with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
                    live = pool.submit(dst.call, "mig.dst_go_live", name=self.name, service_ip=c.service_ip)
                    src.call("net.route_service", service_ip=c.service_ip, ifname=self.src_if)
                    live.result()
                if self.mode == "postcopy":
                    src.call("mig.src_isolate", name=self.name)
                data = self.inv.read()
                dst_pub = data.host(self.dst_name).public_address
                for p in c.ports:
                    dst.call("net.publish", owner=self.name, public_ip=dst_pub, host_port=p.host_port,
                             service_ip=c.service_ip, container_port=p.container_port, proto=p.proto)
            self._reroute_forwarders()
            self._record_move()

    def _prepare_forwarders(self) -> None:
        """Hosts the container lived on before keep forwarding to it: give each a (warm)
        tunnel to the new home now, so the switch only changes a route."""
        self.forwarder_ifs: dict[str, str] = {}
        for fwd in self.container.forwards:
            if fwd.host in (self.dst_name, self.src_name):
                continue
            t = tunnels.up(fwd.host, self.dst_name, self.inv, exist_ok=True)
            f_if, d_if = (t.iface_a, t.iface_b) if t.a == fwd.host else (t.iface_b, t.iface_a)
            with self._agent(self.dst_name) as dst:
                dst.call("net.track_tunnel", ifname=d_if)
            self.forwarder_ifs[fwd.host] = f_if
            self.dst_if_by_host[fwd.host] = d_if

    def _reroute_forwarders(self) -> None:
        for host, f_if in self.forwarder_ifs.items():
            with self._agent(host) as f:
                f.call("net.route_service", service_ip=self.container.service_ip, ifname=f_if)

    def _record_move(self) -> None:
        with self.inv.transaction() as data:
            rec = data.containers[self.name]
            forwards = {f.host: f for f in rec.forwards if f.host != self.dst_name}
            if rec.ports:
                forwards[self.src_name] = ForwardRecord(
                    host=self.src_name, ports=[PortMapping(**p.model_dump()) for p in rec.ports])
            rec.forwards = list(forwards.values())
            rec.host = self.dst_name
            rec.state = "running"
        self.on_event("switched", forwards=[f.host for f in self.inv.read().container(self.name).forwards])

    def _lazy_transfer(self) -> None:
        if self.mode != "postcopy":
            return
        with self._phase("lazy"):
            last_copied, last_change = -1, time.monotonic()
            with self._agent(self.dst_name) as dst:
                while True:
                    prog = dst.call("mig.dst_lazy_progress", name=self.name)
                    self.on_event("lazy", **prog)
                    if prog.get("done"):
                        break
                    if prog.get("copied_pages", 0) != last_copied:
                        last_copied, last_change = prog.get("copied_pages", 0), time.monotonic()
                    elif time.monotonic() - last_change > LAZY_STALL_WARN_S:
                        self.on_event("warning", message=(
                            f"no page arrived for {LAZY_STALL_WARN_S} s; the source keeps serving "
                            "them until the transfer completes (check `cloudmig tunnel status`)"))
                        last_change = time.monotonic()
                    time.sleep(LAZY_POLL_S)
                final = dst.call("mig.dst_wait_lazy", name=self.name)
            if final.get("rc") not in (0, None):
                raise errors.LazyPagesError(
                    f"The lazy-pages daemon on {self.dst_name} exited with {final['rc']}; the "
                    f"container's memory may be incomplete. The source {self.src_name} keeps its copy.",
                    hint=f"Inspect the migration directory on {self.dst_name}.")
            with self._agent(self.src_name) as src:
                dump = src.call("mig.src_wait_dump", name=self.name, timeout_s=DUMP_EXIT_TIMEOUT_S)
            self.report.lazy_pages = int(final.get("lazy_pages", 0))
            self.report.faulted_pages = int(final.get("faulted_pages", 0))
            self.report.pushed_pages = int(final.get("pushed_pages", 0))
            stats = dump.get("stats") or {}
            self.report.dumped_pages = int(stats.get("pages_written", 0))

    def _cleanup_source(self) -> None:
        with self._phase("cleanup"):
            with self._agent(self.src_name) as src:
                if self.mode == "stopcopy":
                    dump = src.call("mig.src_wait_dump", name=self.name)
                    self.report.dumped_pages = int((dump.get("stats") or {}).get("pages_written", 0))
                src.call("mig.src_finish", name=self.name, service_ip=self.container.service_ip)

    # ------------------------------------------------------------------ failure
    def _rollback(self, cause: BaseException) -> None:
        """Before the resume: the container goes on at the source, the destination is cleaned."""
        self.on_event("rollback", reason=str(cause))
        self.report.rolled_back = True
        problems = []
        if self._armed and not self._dumped:
            try:
                with self._agent(self.src_name) as src:
                    src.call("mig.src_dump_disarm", name=self.name)
            except errors.CloudmigError as exc:
                problems.append(f"calling off the dump on {self.src_name} failed: {exc}")
        if self._dumped:
            try:
                with self._agent(self.src_name) as src:
                    src.call("mig.src_rollback", name=self.name, mode=self.mode,
                             service_ip=self.container.service_ip)
            except errors.CloudmigError as exc:
                problems.append(f"resuming on {self.src_name} failed: {exc}")
        if self._dst_touched:
            try:
                self._dst_abort()
            except errors.CloudmigError as exc:
                problems.append(f"cleaning {self.dst_name} failed: {exc}")
        if problems:
            log.error("rollback incomplete: %s", "; ".join(problems))
            self.on_event("warning", message="rollback incomplete: " + "; ".join(problems))

    def _dst_abort(self) -> None:
        record = self.inv.read().host(self.dst_name)
        try:
            client = agents.connect(record)
        except errors.AgentError:
            # the destination's agent died: ask its provider to restart it, then clean up
            from cloudmig import providers
            provider = providers.load(record.provider)
            restart = getattr(provider, "restart_agent", None)
            if restart is None:
                raise
            self.on_event("warning", message=f"restarting the agent of {self.dst_name} to clean up")
            record = restart(record)
            client = agents.connect(record)
        with client:
            client.call("mig.dst_abort", name=self.name, service_ip=self.container.service_ip)
