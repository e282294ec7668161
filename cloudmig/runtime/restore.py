"""Restoring a runc container with CRIU on the destination host.

    r = Restore.arm(runtime, "web", images, work, lazy_pages=True, descriptors=[...])
    ...                                  # the freeze: images arrive, the rootfs is mounted
    r.go(steps)                          # CRIU restores now
    pid = r.finish(daemon, ("100.64.0.1", 27000), steps)
    restore_now(runtime, "web", images, work)     # at once: rollbacks, no gate

``arm`` starts runc long before the freeze: runc does its set-up and CRIU waits at its gate
(cloudmig.runtime.gate). With lazy pages, the lazy-pages daemon must reach the page server
within LAZY_CONNECT_TIMEOUT_S of ``go``, or the restore is abandoned (a daemon that cannot
fetch pages would leave the restored copy hanging on its first fault).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

from cloudmig import errors
from cloudmig.runtime import criu, gate, mounts, procs, sockets
from cloudmig.runtime.lazy_pages import LAZY_CONNECT_TIMEOUT_S, LazyPagesDaemon
from cloudmig.runtime.runc import Runtime
from cloudmig.timing import Steps

RESTORE_TIMEOUT_S = 600
RESTORE_ABORT_S = 1                  # an abandoned restore gets this long to end by itself
RESTORE_POLL_S = 0.002


class Restore:
    def __init__(self, runtime: Runtime, name: str, work: Path, proc: subprocess.Popen,
                 pid_file: Path, conf_gate: gate.ConfigGate | None) -> None:
        self.runtime, self.name, self.work, self.proc = runtime, name, work, proc
        self.pid_file, self.gate = pid_file, conf_gate
        self.gated = conf_gate is not None
        self._bound = False
        self.criu_root = runtime.runc_root / name / "criu-root"   # where runc binds the rootfs
        self.started = time.monotonic()

    @classmethod
    def arm(cls, runtime: Runtime, name: str, images: Path, work: Path, *, lazy_pages: bool,
            descriptors: list[str]) -> "Restore":
        """Start runc restore now; CRIU waits at its gate until ``go``. runc reads the
        container's stdio paths (``descriptors``) before it starts CRIU; the rest of the
        images may come later."""
        images.mkdir(parents=True, exist_ok=True)
        (images / "descriptors.json").write_text(json.dumps(descriptors))
        return cls._start(runtime, name, images, work, lazy_pages=lazy_pages, gated=True)

    @classmethod
    def _start(cls, runtime: Runtime, name: str, images: Path, work: Path, *, lazy_pages: bool,
               gated: bool) -> "Restore":
        b = runtime.bundle(name)
        work.mkdir(parents=True, exist_ok=True)
        images.mkdir(parents=True, exist_ok=True)
        conf_gate = gate.ConfigGate(b.criu_conf) if gated else None
        if conf_gate is not None:
            conf_gate.arm()
        else:
            gate.settle(b.criu_conf)
        pid_file = work / "restored.pid"
        pid_file.unlink(missing_ok=True)
        argv = criu.runc_argv(runtime, "restore", "--detach", "--tcp-established", "--image-path",
                              str(images), "--work-path", str(work), "--bundle", str(b.root),
                              "--pid-file", str(pid_file))
        if lazy_pages:
            argv.append("--lazy-pages")
        argv.append(name)
        with open(work / "runc-restore.log", "wb") as out:
            # own process group: an abandoned restore is killed with its criu
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True)
        r = cls(runtime, name, work, proc, pid_file, conf_gate)
        if conf_gate is not None:
            try:
                conf_gate.wait_reader(proc, "restore", work / "runc-restore.log")
                # runc's bind of the (still unmounted) rootfs on criu-root exists now; made
                # private, nothing mounted on it later propagates anywhere
                mounts.make_private(r.criu_root)
            except BaseException:
                r.abort()
                raise
        return r

    def bind_rootfs(self) -> None:
        """runc bound the rootfs directory on criu-root when it started, before the rootfs was
        mounted: put the mounted rootfs on top, where CRIU will look (once the rootfs is
        mounted; the images may still be on their way)."""
        if self.gate is not None and not self._bound:
            mounts.bind_mount(self.runtime.bundle(self.name).rootfs, self.criu_root)
            self._bound = True

    def go(self, steps: Steps | None = None) -> None:
        """Let CRIU restore now: the images are complete and the rootfs is mounted."""
        steps = steps or Steps()
        if self.gate is not None:
            with steps("bind_rootfs"):
                self.bind_rootfs()
            self.gate.release()
            self.gate = None
        self.started = time.monotonic()

    def finish(self, lazy: LazyPagesDaemon | None = None,
               page_server: tuple[str, int] | None = None, steps: Steps | None = None) -> int:
        """Wait for runc; the restored init's pid. Proves the lazy-pages daemon connected."""
        steps = steps or Steps()
        ok = False
        try:
            with steps("runc_restore"):
                pid = self._finish(lazy, page_server)
            ok = True
            return pid
        finally:
            if self.gated:
                # runc detached only the top one of the two mounts on criu-root; the other
                # goes after the resume (it holds nothing the container uses)
                if ok:
                    threading.Thread(target=mounts.unmount_private, args=(self.criu_root,),
                                     name=f"unbind-{self.name}", daemon=True).start()
                else:
                    mounts.unmount_private(self.criu_root)

    def _finish(self, lazy: LazyPagesDaemon | None, page_server: tuple[str, int] | None) -> int:
        proc = self.proc
        connected = lazy is None
        with procs.exit_waiter(proc) as exited:
            while proc.poll() is None:
                if not connected and lazy is not None and page_server is not None:
                    connected = sockets.tcp_established(*page_server)
                    if not connected and (lazy.done or time.monotonic() - self.started > LAZY_CONNECT_TIMEOUT_S):
                        lazy.kill()          # unblocks CRIU, which then fails the restore
                        procs.wait_or_kill(proc, RESTORE_ABORT_S)
                        raise lazy.unreachable(*page_server)
                if time.monotonic() - self.started > RESTORE_TIMEOUT_S:
                    procs.wait_or_kill(proc, 0)
                    raise errors.RestoreError(f"The restore did not finish within {RESTORE_TIMEOUT_S} s.")
                exited(RESTORE_POLL_S)      # at once when runc exits, not at the next poll
        return self._restored(lazy, page_server, connected)

    def _restored(self, lazy: LazyPagesDaemon | None, page_server: tuple[str, int] | None,
                  connected: bool) -> int:
        proc, work = self.proc, self.work
        if proc.returncode != 0:
            raise criu.failure(errors.RestoreError, "CRIU could not restore the container",
                               [work / "restore.log", work / "runc-restore.log"], side="destination")
        if lazy is not None and page_server is not None and not connected:
            lazy.wait_connected(*page_server)
        # runc wrote the restored init's pid; reading it costs nothing, a `runc state` ~10 ms
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            pid = 0
        if not pid or not procs.process_alive(pid):
            st = self.runtime.state(self.name)
            raise errors.RestoreError(f"The restored container is {st['status']}, not running.")
        return pid

    def abort(self) -> None:
        """Call off a restore that has not been let go, or kill one that hangs."""
        procs.wait_or_kill(self.proc, 0)
        if self.gate is not None:
            self.gate.settle()
            self.gate = None
        if self.gated:
            remove_runc_leftovers(self.runtime, self.name)


def remove_runc_leftovers(runtime: Runtime, name: str) -> None:
    """What a killed ``runc restore`` leaves: its bind on criu-root and its state directory
    (without which the next restore of this name would find "a container with that ID")."""
    state_dir = runtime.runc_root / name
    mounts.unmount_private(state_dir / "criu-root")
    if state_dir.is_dir() and not (state_dir / "state.json").exists():
        shutil.rmtree(state_dir, ignore_errors=True)


def forget_orphans(runtime: Runtime, name: str, migration_dir: Path) -> None:
    """An armed restore or lazy-pages daemon of an agent that died since (runc with its criu:
    one process group): killed, and the container's CRIU config a file again."""
    procs.kill_groups_mentioning(str(migration_dir))
    gate.settle(runtime.bundle(name).criu_conf)


def restore_now(runtime: Runtime, name: str, images: Path, work: Path) -> int:
    """``runc restore`` at once, without lazy pages (a stop-and-copy rollback)."""
    r = Restore._start(runtime, name, images, work, lazy_pages=False, gated=False)
    r.go()
    return r.finish()
