"""The agent's migration operations: every migration on this host, as source or destination.

    ops = Migrations(HostContext(runtime, net))
    ops.handlers()["outgoing.arm"](name="db", mode="postcopy", address=..., port=...)

Each op name is written out in ``handlers`` and in cloudmig.agent.api, where the controller
calls it. Per-container state between calls (the armed dump, the lazy-pages daemon, open
receivers) lives in one Outgoing or Incoming object per container, in the agent process; its
state refuses ops that arrive out of order. The undo ops (``outgoing.disarm``,
``outgoing.rollback``, ``incoming.abort``) also work for a migration this agent never saw: an
agent restarted to clean up finds what its predecessor left by its files and processes.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from cloudmig import errors
from cloudmig.agent import faults
from cloudmig.agent.api import Memory, Mode
from cloudmig.agent.incoming import Incoming, discard
from cloudmig.agent.outgoing import Outgoing, recover
from cloudmig.agent.side import FINAL, HostContext, Side, State, read_journals
from cloudmig.network import hold
from cloudmig.runtime import criu, dump, sockets

PROBE_CONNECT_TIMEOUT_S = 10


class Migrations:
    def __init__(self, ctx: HostContext) -> None:
        self.ctx = ctx
        self.outgoing: dict[str, Outgoing] = {}
        self.incoming: dict[str, Incoming] = {}
        self._probes: dict[str, socket.socket] = {}
        self._sinks: dict[int, tuple[threading.Thread, dict]] = {}
        self._lock = threading.Lock()
        # what an earlier agent on this host left (this one restarted): by role, by container
        self.earlier = {role: read_journals(ctx, role) for role in ("outgoing", "incoming")}
        # a container restored here whose pages are still coming is watched again at once, by
        # itself: should its lazy-pages daemon end before the last page, it is frozen
        for name, rec in self.earlier["incoming"].items():
            if rec.get("mode") == Mode.POSTCOPY.value and rec["state"] in ("resumed", "switched"):
                self._adopt(Incoming)(name)

    def handlers(self) -> dict[str, Callable[..., Any]]:
        def out(method: Callable[..., Any]) -> Callable[..., Any]:
            return self._on(self.outgoing, "outgoing", method, self._adopt(Outgoing))

        def inc(method: Callable[..., Any]) -> Callable[..., Any]:
            return self._on(self.incoming, "incoming", method, self._adopt(Incoming))

        return {
            "host.memory": self.memory,
            "host.cpuinfo": self.cpuinfo,
            "host.cpu_lacks": self.cpu_lacks,
            "probe.free_port": sockets.free_port,
            "probe.listen": self.probe_listen,
            "probe.connect": self.probe_connect,
            "probe.close": self.probe_close,
            "probe.sink": self.probe_sink,
            "probe.sink_result": self.probe_sink_result,
            "probe.blast": probe_blast,
            "outgoing.presync": self.outgoing_presync,
            "outgoing.arm": out(Outgoing.arm),
            "outgoing.disarm": self.outgoing_disarm,
            "outgoing.hold": out(Outgoing.hold),
            "outgoing.release_hold": self.outgoing_release_hold,
            "outgoing.checkpoint": out(Outgoing.checkpoint),
            "outgoing.switch_over": out(Outgoing.switch_over),
            "outgoing.wait_dump": out(Outgoing.wait_dump),
            "outgoing.finish": out(Outgoing.finish),
            "outgoing.rollback": self.outgoing_rollback,
            "outgoing.take_back": out(Outgoing.take_back),
            "incoming.prepare": self.incoming_prepare,
            "incoming.receive": inc(Incoming.receive),
            "incoming.receive_wait": inc(Incoming.receive_wait),
            "incoming.arm": inc(Incoming.arm),
            "incoming.restore": inc(Incoming.restore),
            "incoming.go_live": inc(Incoming.go_live),
            "incoming.lazy_progress": inc(Incoming.lazy_progress),
            "incoming.finish": inc(Incoming.finish),
            "incoming.abort": self.incoming_abort,
            "incoming.drop": inc(Incoming.drop),
            "migration.status": self.status,
            "fault": self.fault,
        }

    # ------------------------------------------------------------------ lookups
    @staticmethod
    def _on(table: dict[str, Any], role: str, method: Callable[..., Any],
            adopt: Callable[[str], Side | None]) -> Callable[..., Any]:
        """A handler calling ``method`` on the ``role`` side of the container it names."""
        def handler(name: str, **args: Any) -> Any:
            side = table.get(name) or adopt(name)
            if side is None:
                raise errors.MigrationError(
                    f"No {role} migration of {name} is known on this host (its agent may have "
                    "restarted since the migration began).", hint="Run the migration again.")
            side.running.append(method.__name__)
            try:
                return method(side, **args)
            finally:
                side.running.remove(method.__name__)
        return handler

    ADOPTABLE = (State.FROZEN, State.RESUMED, State.SWITCHED, State.DRAINED, State.DONE)

    def _adopt(self, cls: type[Side]) -> Callable[[str], Side | None]:
        """Past the freeze, a migration whose agent died goes on with this one: its side is
        made again from its journal (before the freeze, the undo ops clean up instead)."""
        role, table = cls.role, (self.outgoing if cls is Outgoing else self.incoming)

        def adopt(name: str) -> Side | None:
            with self._lock:
                if name in table:
                    return table[name]
                rec = self.earlier[role].get(name)
                if rec is None or State(rec["state"]) not in self.ADOPTABLE or not rec.get("mode"):
                    return None
                side = cls.adopt(self.ctx, name, Mode(rec["mode"]), State(rec["state"]))
                table[name] = side
                return side
        return adopt

    def _claim(self, table: dict[str, Side], name: str, make: Callable[[], Side]) -> Any:
        """A new migration of ``name`` on this side; refused while one is in flight."""
        with self._lock:
            old = table.get(name)
            if old is not None and old.state not in (*FINAL, State.PREPARED):
                old.expect("a new migration", *FINAL, State.PREPARED)
        side = make()
        table[name] = side
        side.write_journal()
        return side

    def status(self, name: str) -> dict:
        """Where each side of ``name``'s migration is on this host (None: no such side), and
        the container's own runtime status here: what a controller recovering it asks."""
        sides = {}
        for role, table in (("outgoing", self.outgoing), ("incoming", self.incoming)):
            side = table.get(name)
            earlier = self.earlier[role].get(name)
            sides[role] = side.status() if side is not None else (
                None if earlier is None else {k: earlier[k] for k in ("state", "busy", "known")})
        try:
            container = self.ctx.runtime.state(name)["status"]
        except errors.CloudmigError:
            container = "absent"
        return {**sides, "container": container}

    # ------------------------------------------------------------------ preflight
    def memory(self, name: str | None = None) -> Memory:
        """MemAvailable of this host, free disk where migrations go, and the container's RSS."""
        info = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0]) * 1024
        where = self.ctx.runtime.host_dir / "migrations"      # images and CRIU's files go here
        where.mkdir(parents=True, exist_ok=True)
        usage = shutil.disk_usage(where)
        rss = 0
        if name:
            st = self.ctx.runtime.state(name)
            if st["status"] != "running":
                raise errors.PreflightError(f"Container {name} is {st['status']} on this host, not running.")
            rss = _tree_rss(int(st["pid"]))
        return Memory(mem_available=info.get("MemAvailable", 0), disk_free=usage.free, rss=rss)

    def cpuinfo(self) -> str:
        with self._scratch("cpuinfo-") as scratch:
            return base64.b64encode(criu.cpuinfo_dump(scratch)).decode()

    def cpu_lacks(self, image_b64: str) -> str | None:
        with self._scratch("cpuinfo-incoming-") as scratch:
            return criu.cpuinfo_check(scratch, base64.b64decode(image_b64))

    @contextlib.contextmanager
    def _scratch(self, prefix: str):
        """A directory of this call's own: migrations running at once (a plan's) each check
        CPUs, and one fixed path let one read a file the other was writing."""
        d = Path(tempfile.mkdtemp(prefix=prefix, dir=self.ctx.runtime.host_dir))
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def probe_listen(self, address: str, port: int) -> None:
        """Listen on ADDRESS:PORT so the other host can prove it reaches it (then close)."""
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, port))
        s.listen(1)
        self._probes[f"{address}:{port}"] = s

    def probe_connect(self, address: str, port: int) -> float:
        start = time.monotonic()
        try:
            with socket.create_connection((address, port), timeout=PROBE_CONNECT_TIMEOUT_S):
                pass
        except OSError as exc:
            raise errors.PreflightError(
                f"This host cannot reach {address}:{port} (the page server's address) through "
                f"the tunnel: {exc}.", hint="Check the tunnel and any firewall between the hosts.") from exc
        return (time.monotonic() - start) * 1000

    def probe_close(self, address: str, port: int) -> None:
        s = self._probes.pop(f"{address}:{port}", None)
        if s:
            s.close()

    # the tunnel's own throughput (the bench measures each transfer as a fraction of it)
    def probe_sink(self, address: str) -> int:
        """Listen on ADDRESS (any port) for one connection, whose bytes are counted and dropped."""
        srv = socket.socket()
        srv.bind((address, 0))
        srv.listen(1)
        srv.settimeout(PROBE_CONNECT_TIMEOUT_S)
        port = srv.getsockname()[1]
        result: dict = {}
        self._sinks[port] = (threading.Thread(target=_sink, args=(srv, result), daemon=True), result)
        self._sinks[port][0].start()
        return port

    def probe_sink_result(self, port: int, timeout_s: float = 300) -> dict:
        thread, result = self._sinks.pop(port)
        thread.join(timeout_s)
        if "error" in result or thread.is_alive():
            raise errors.NetworkError(f"The throughput probe on port {port} failed: "
                                      f"{result.get('error', 'no end within the timeout')}.")
        return result

    # ------------------------------------------------------------------ the two sides
    def outgoing_presync(self, name: str, mode: str, address: str, port: int, token: str):
        out = self._claim(self.outgoing, name, lambda: Outgoing(self.ctx, name, Mode(mode)))
        return out.presync(address, port, token)

    def outgoing_disarm(self, name: str) -> None:
        out = self.outgoing.get(name)
        if out is not None:
            out.disarm()
        else:       # armed by an agent that died since
            dump.forget_orphan(self.ctx.runtime, name, self.ctx.migration_dir(name) / "work-src")
            shutil.rmtree(self.ctx.migration_dir(name), ignore_errors=True)

    def outgoing_release_hold(self, name: str) -> int:
        out = self.outgoing.get(name)
        if out is not None:
            return out.release_hold()
        hold.release_orphans(name)       # a dead holder's rules (they let packets pass already)
        return 0

    def outgoing_rollback(self, name: str, mode: str, service_ip: str) -> None:
        out = self.outgoing.get(name)
        if out is not None:
            out.rollback(service_ip)
        else:
            recover(self.ctx, name, Mode(mode), service_ip, known=False)

    def incoming_prepare(self, name: str, mode: str, **args: Any) -> None:
        self._claim(self.incoming, name, lambda: Incoming.prepare(self.ctx, name, Mode(mode), **args))

    def incoming_abort(self, name: str, service_ip: str) -> None:
        inc = self.incoming.get(name)
        if inc is not None:
            inc.abort(service_ip)
        else:
            discard(self.ctx, name, service_ip)

    def fault(self, action: str, name: str, args: dict[str, Any]) -> None:
        faults.run(self, action, name, **args)


PROBE_CHUNK = 1 << 20


def _sink(srv: socket.socket, result: dict) -> None:
    try:
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(PROBE_CONNECT_TIMEOUT_S)
            total, start = 0, time.monotonic()
            while chunk := conn.recv(PROBE_CHUNK):
                total += len(chunk)
            result.update(bytes=total, seconds=time.monotonic() - start)
    except OSError as exc:
        result["error"] = str(exc)
    finally:
        srv.close()


def probe_blast(address: str, port: int, nbytes: int, seconds: float | None = None) -> None:
    """Send ``nbytes`` zeros to a ``probe.sink`` (through the tunnel, when ADDRESS is the
    peer's tunnel address), or fewer if ``seconds`` pass first."""
    block = bytes(PROBE_CHUNK)
    deadline = time.monotonic() + seconds if seconds is not None else None
    with socket.create_connection((address, port), timeout=PROBE_CONNECT_TIMEOUT_S) as s:
        left = nbytes
        while left > 0 and (deadline is None or time.monotonic() < deadline):
            s.sendall(block[:min(left, PROBE_CHUNK)])
            left -= PROBE_CHUNK


def _tree_rss(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants, in bytes."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for tid in Path(f"/proc/{p}/task").iterdir():
                children = (tid / "children").read_text().split()
                todo += [int(c) for c in children]
        except OSError:
            continue
    return total
