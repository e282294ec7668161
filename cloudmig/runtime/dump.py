"""Dumping a runc container with CRIU on the source host.

    d = LazyDump.arm(runtime, "web", images, work, address="100.64.0.1", port=27000)
    smaps_ahead.take(pids, smaps_dir(work))    # the mappings' flags, read while it runs
    ...                          # the freeze: the container is locked and frozen
    d.go(); d.wait_ready()       # CRIU dumped all but memory; its page server listens
    # (cloudmig.runtime.smaps_ahead: no flag CRIU took from a copy may have changed)
    d.wait()                     # returns once every page has been served
    full_dump(runtime, "web", images, work)    # stop-and-copy: everything, container ends

Post-copy dumps with ``--leave-running``: whatever happens (every page served, the
destination failing, the transfer aborted) CRIU ends the dump with the container alive on
this host, and the caller decides whether to kill it (migration done) or keep it (rolled
back). Stop-and-copy dumps in full and lets CRIU end the container; CRIU's network lock
keeps its TCP connections silent until a restore (here or there) unlocks them.

The dump owns its gate (cloudmig.runtime.gate): whatever ends it (``go``, ``abort``,
``forget_orphan`` after an agent restart) leaves the container's CRIU config a file again.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from pathlib import Path

from cloudmig import errors
from cloudmig.runtime import criu, gate, procs, smaps_ahead, sockets
from cloudmig.runtime.runc import Runtime

PAGE_SERVER_READY_TIMEOUT_S = 60     # lazy dump until the page server listens (2 GiB: ~0.3 s)
FULL_DUMP_TIMEOUT_S = 1800           # stop-and-copy of many GiB over a slow disk
ABORT_GRACE_S = 60                   # a running dump told to end its page server ends within this


def _fresh(*dirs: Path) -> None:
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)


def smaps_dir(work: Path) -> Path:
    """Where a lazy dump's CRIU looks for the copies of smaps (cloudmig.runtime.smaps_ahead)."""
    return work / "smaps-ahead"


class LazyDump:
    """``runc checkpoint --lazy-pages``: dump all but memory, then serve memory on demand."""

    def __init__(self, proc: subprocess.Popen, status_r: int, images: Path, work: Path,
                 address: str, port: int, conf_gate: gate.ConfigGate | None) -> None:
        self.proc, self._status_r = proc, status_r
        self.images, self.work, self.address, self.port = images, work, address, port
        self.gate = conf_gate

    @classmethod
    def arm(cls, runtime: Runtime, name: str, images: Path, work: Path, address: str,
            port: int) -> "LazyDump":
        """Start runc and CRIU now; CRIU waits at its gate until ``go`` (inside the freeze)."""
        return cls._start(runtime, name, images, work, address, port, gated=True)

    @classmethod
    def start(cls, runtime: Runtime, name: str, images: Path, work: Path, address: str,
              port: int) -> "LazyDump":
        """Start runc and CRIU to dump at once (the container must be frozen by now)."""
        return cls._start(runtime, name, images, work, address, port, gated=False)

    @classmethod
    def _start(cls, runtime: Runtime, name: str, images: Path, work: Path, address: str,
               port: int, gated: bool) -> "LazyDump":
        _fresh(images, work)
        conf_gate = gate.ConfigGate(runtime.bundle(name).criu_conf)
        if gated:
            conf_gate.arm()
        else:
            gate.settle(conf_gate.conf)
        r, w = os.pipe()
        argv = criu.runc_argv(runtime, "checkpoint", "--lazy-pages", "--leave-running",
                              "--page-server", f"{address}:{port}", "--status-fd", str(w),
                              "--tcp-established", "--image-path", str(images),
                              "--work-path", str(work), name)
        with open(work / "runc.log", "wb") as out:
            # own process group: an armed dump that is called off is killed with its criu.
            # runc passes its environment on to CRIU: where the copies of smaps are, if any
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    pass_fds=(w,), start_new_session=True,
                                    env=os.environ | smaps_ahead.env(smaps_dir(work)))
        os.close(w)
        dump = cls(proc, r, images, work, address, port, conf_gate if gated else None)
        if gated:
            try:
                conf_gate.wait_reader(proc, "checkpoint", work / "runc.log")
            except BaseException:
                dump.abort()
                raise
        return dump

    @property
    def armed(self) -> bool:
        """Started and waiting at its gate: it has not touched the container."""
        return self.gate is not None

    def go(self) -> None:
        """Let an armed dump's CRIU go on (the container must be frozen by now)."""
        if self.gate is not None:
            self.gate.release()
            self.gate = None

    def abort(self) -> None:
        """Call off the dump: runc and CRIU are killed, the CRIU config is a file again. An
        armed dump has not touched the container; a running one ends its page server first
        (the container, left running by CRIU, stays frozen for the caller to thaw)."""
        if self.gate is None and self.proc.poll() is None:
            sockets.abort_page_server(self.address, self.port)
        procs.wait_or_kill(self.proc, 0 if self.gate is not None else ABORT_GRACE_S)
        self._close_status()
        if self.gate is not None:
            self.gate.settle()
            self.gate = None

    def wait_ready(self, timeout_s: float = PAGE_SERVER_READY_TIMEOUT_S) -> None:
        """Return once CRIU dumped all but memory and its page server listens."""
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.proc.kill()
                    raise errors.CheckpointError(f"The lazy dump did not get ready within {timeout_s} s.")
                ready, _, _ = select.select([self._status_r], [], [], min(left, 0.5))
                if ready:
                    if os.read(self._status_r, 1) == b"\0":
                        return
                    # EOF: runc/criu exited before the page server listened
                    self.proc.wait()
                    raise criu.failure(errors.CheckpointError, "CRIU could not dump the container",
                                       [self.work / "dump.log", self.work / "runc.log"], side="source")
        finally:
            self._close_status()

    def wait(self, timeout_s: float | None = None) -> int:
        return self.proc.wait(timeout=timeout_s)

    def _close_status(self) -> None:
        if self._status_r >= 0:
            os.close(self._status_r)
            self._status_r = -1


class AdoptedDump:
    """A lazy dump an agent that died since started, still serving pages (or gone): waited
    for by its work directory, which its command line names."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.orphan = procs.Orphan(str(work))

    def wait(self, timeout_s: float | None = None) -> int:
        self.orphan.wait(timeout_s)
        return 0

    def abort(self) -> None:
        self.orphan.kill()


def forget_orphan(runtime: Runtime, name: str, work: Path) -> None:
    """A dump this agent does not know, started by an agent that died since. If that agent
    died while the dump was armed, CRIU read an empty configuration and dumped with runc's
    own options, and holds the container frozen for a page client that never comes: kill its
    runc and criu (one process group) and make the CRIU config a file again."""
    procs.kill_groups_mentioning(str(work))
    gate.settle(runtime.bundle(name).criu_conf)


def full_dump(runtime: Runtime, name: str, images: Path, work: Path) -> None:
    """Stop-and-copy: dump everything, memory included; the container ends."""
    _fresh(images, work)
    res = runtime.runc("--criu", criu.path(), "checkpoint", "--tcp-established",
                       "--image-path", str(images), "--work-path", str(work), name,
                       check=False, timeout=FULL_DUMP_TIMEOUT_S)
    if res.returncode != 0:
        raise criu.failure(errors.CheckpointError, "CRIU could not dump the container",
                           [work / "dump.log"], side="source", fallback=res.stderr.strip())
