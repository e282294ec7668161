"""Host-local checkpoint and restore of a runc container with CRIU (used by the agent).

    ck = LazyCheckpoint.start(runtime, "web", images, work, address="100.64.0.1", port=27000)
    ck.wait_ready()              # the page server listens: the images dir is complete
    ...                          # destination: LazyRestore.start(...) then restore(...)
    ck.wait()                    # returns once every page has been served

Post-copy dumps with ``--leave-running``: whatever happens (every page served, the
destination failing, the transfer aborted) CRIU ends the dump with the container alive on
this host, and the caller decides whether to kill it (migration done) or keep it (rolled
back). Stop-and-copy dumps in full and lets CRIU end the container; CRIU's network lock
keeps its TCP connections silent until a restore (here or there) unlocks them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

from cloudmig import errors, paths
from cloudmig.runtime import container as rt
from cloudmig.runtime import gate
from cloudmig.timing import Steps

log = logging.getLogger(__name__)

PAGE_SERVER_READY_TIMEOUT_S = 60     # lazy dump until the page server listens (2 GiB: ~0.3 s)
FULL_DUMP_TIMEOUT_S = 1800           # stop-and-copy of many GiB over a slow disk
RESTORE_TIMEOUT_S = 600
LAZY_DAEMON_START_S = 10             # lazy-pages daemon creating its socket
LAZY_CONNECT_TIMEOUT_S = 3           # from the restore's start; the daemon connects within this
RESTORE_ABORT_S = 1                  # an abandoned restore gets this long to end by itself
CRIU_LOG_LEVEL = "4"                 # the lazy-pages log at level 4 lets us count faults
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


KDAT_DIR = Path("/run/criu")         # CRIU's RUNDIR as scripts/bootstrap-host builds it
TMPFS_MAGIC = 0x01021994


def ensure_kdat_cache() -> bool:
    """Keep a tmpfs on KDAT_DIR so CRIU can cache its kernel probe (bootstrap-host mounts it;
    this puts it back after a reboot). False if it could not."""
    try:
        KDAT_DIR.mkdir(parents=True, exist_ok=True)
        if _fs_type(KDAT_DIR) == TMPFS_MAGIC:
            return True
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "cloudmig-criu",
                        str(KDAT_DIR)], check=True, capture_output=True)
        return True
    except (OSError, subprocess.CalledProcessError) as exc:
        log.warning("no tmpfs for CRIU's kernel-feature cache on %s: %s", KDAT_DIR, exc)
        return False


def ensure_favordynmods() -> bool:
    """Cheap cgroup moves for CRIU's restore (see scripts/bootstrap-host, step cgroups); the
    bootstrap remounts, this puts it back after a reboot. False if it could not."""
    found = rt.cgroup2_mount()
    if found is None or found[1]:
        return found is not None
    res = subprocess.run(["mount", "-o", "remount,favordynmods", found[0]], capture_output=True, text=True)
    if res.returncode != 0:
        log.warning("cgroup2 on %s cannot take favordynmods: %s", found[0], res.stderr.strip())
    return res.returncode == 0


def _fs_type(path: Path) -> int:
    out = subprocess.run(["stat", "-f", "-c", "%t", str(path)], capture_output=True, text=True)
    return int(out.stdout.strip() or "0", 16)


def criu_path() -> str:
    criu = paths.criu_binary()
    if not criu:
        raise errors.HostSetupError("CRIU is not installed on this host.",
                                    hint="Run `cloudmig doctor` there.")
    return criu


def _runc_criu(runtime: rt.Runtime, *args: str) -> list[str]:
    """``runc --root ... --criu <our criu> ARGS``."""
    return runtime.runc_argv("--criu", criu_path(), *args)


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def abort_page_server(address: str, port: int) -> None:
    """End a lazy dump whose page server nobody connected to: connect and close at once."""
    try:
        with socket.create_connection((address, port), timeout=5):
            pass
    except OSError:
        pass


def tcp_established(address: str, port: int) -> bool:
    """Is there an ESTABLISHED TCP connection to ADDRESS:PORT in this network namespace?"""
    want = f"{socket.inet_aton(address)[::-1].hex().upper()}:{port:04X}"
    try:
        with open("/proc/net/tcp") as fh:
            next(fh)
            return any(f.split()[2] == want and f.split()[3] == "01" for f in fh)
    except OSError:
        return False


def kill_groups_mentioning(text: str) -> None:
    """Kill every process whose command line mentions ``text``, with its process group when
    it leads one (a runc started in its own session takes its criu along)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if text.encode() not in fh.read():
                    continue
            pid = int(entry)
            if os.getpgid(pid) == pid:
                os.killpg(pid, 9)
            else:
                os.kill(pid, 9)
        except OSError:
            pass


def read_dump_stats(work: Path) -> dict:
    """CRIU's stats-dump image (pages scanned, written, lazy; freeze times), via pycriu.
    CRIU writes it into its working directory (runc's --work-path), not the images."""
    path = work / "stats-dump"
    if not path.exists():
        return {}
    try:
        import pycriu  # built from the same CRIU tree as the binary (scripts/bootstrap-host)
        with open(path, "rb") as fh:
            img = pycriu.images.load(fh)
        return dict(img["entries"][0].get("dump", {}))
    except Exception as exc:  # stats are a report detail; a missing pycriu must not fail a migration
        log.warning("cannot read %s: %s", path, exc)
        return {}


def dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


class LazyCheckpoint:
    """``runc checkpoint --lazy-pages``: freeze, dump all but memory, serve memory on demand."""

    def __init__(self, proc: subprocess.Popen, status_r: int, images: Path, work: Path,
                 address: str, port: int) -> None:
        self.proc, self._status_r = proc, status_r
        self.images, self.work, self.address, self.port = images, work, address, port
        self.gate: gate.ConfigGate | None = None

    @classmethod
    def start(cls, runtime: rt.Runtime, name: str, images: Path, work: Path, address: str,
              port: int, gated: bool = False) -> "LazyCheckpoint":
        """With ``gated``, runc and CRIU start now but CRIU waits for ``go()`` before it
        touches the container (see cloudmig.runtime.gate): call it inside the freeze."""
        for d in (images, work):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        conf_gate = gate.ConfigGate(runtime.bundle(name).criu_conf)
        if gated:
            conf_gate.arm()
        else:
            gate.settle(conf_gate.conf)
        r, w = os.pipe()
        argv = _runc_criu(runtime, "checkpoint", "--lazy-pages", "--leave-running",
                          "--page-server", f"{address}:{port}", "--status-fd", str(w),
                          "--tcp-established", "--image-path", str(images), "--work-path", str(work),
                          name)
        with open(work / "runc.log", "wb") as out:
            # own process group: an armed dump that is called off is killed with its criu
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    pass_fds=(w,), start_new_session=True)
        os.close(w)
        ck = cls(proc, r, images, work, address, port)
        if gated:
            ck.gate = conf_gate
            try:
                conf_gate.wait_reader(proc, "checkpoint", work / "runc.log")
            except BaseException:
                ck.abort()
                raise
        return ck

    def go(self) -> None:
        """Let an armed dump's CRIU go on (the container must be frozen by now)."""
        if self.gate is not None:
            self.gate.release()
            self.gate = None

    @property
    def armed(self) -> bool:
        return self.gate is not None

    def abort(self) -> None:
        """Call off a dump: its runc and CRIU are killed (an armed one has not touched the
        container yet), and the container's CRIU config is a file again."""
        _wait_or_kill(self.proc, 0)
        if self._status_r >= 0:
            os.close(self._status_r)
            self._status_r = -1
        if self.gate is not None:
            self.gate.settle()
            self.gate = None

    def wait_ready(self, timeout_s: float = PAGE_SERVER_READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.proc.kill()
                    raise errors.CheckpointError(f"The lazy dump did not get ready within {timeout_s} s.")
                ready, _, _ = select.select([self._status_r], [], [], min(left, 0.5))
                if ready:
                    data = os.read(self._status_r, 1)
                    if data == b"\0":
                        return
                    # EOF: runc/criu exited before the page server listened
                    self.proc.wait()
                    raise errors.CheckpointError(
                        f"CRIU could not dump the container: {rt.log_excerpt(self.work / 'dump.log') or rt.log_excerpt(self.work / 'runc.log')}",
                        hint=f"See {self.work}/dump.log on the source host.")
        finally:
            os.close(self._status_r)
            self._status_r = -1

    def wait(self, timeout_s: float | None = None) -> int:
        return self.proc.wait(timeout=timeout_s)


def full_checkpoint(runtime: rt.Runtime, name: str, images: Path, work: Path) -> None:
    for d in (images, work):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    res = runtime.runc("--criu", criu_path(), "checkpoint", "--tcp-established",
                       "--image-path", str(images), "--work-path", str(work), name,
                       check=False, timeout=FULL_DUMP_TIMEOUT_S)
    if res.returncode != 0:
        raise errors.CheckpointError(
            f"CRIU could not dump the container: {rt.log_excerpt(work / 'dump.log') or res.stderr.strip()}",
            hint=f"See {work}/dump.log on the source host.")


class LazyPagesDaemon:
    """``criu lazy-pages``: serves the restored container's page faults from the source's
    page server, then pulls every remaining page in the background, and exits when done."""

    def __init__(self, proc: subprocess.Popen, work: Path) -> None:
        self.proc, self.work = proc, work
        self._log_offset = self._total = self._faulted = self._copied = self._copied_live = 0

    @classmethod
    def spawn(cls, images: Path, work: Path, address: str, port: int) -> "LazyPagesDaemon":
        """Start the daemon; ``wait_listening`` before a restore needs it (other work in between)."""
        work.mkdir(parents=True, exist_ok=True)
        (work / "lazy-pages.socket").unlink(missing_ok=True)
        argv = [criu_path(), "lazy-pages", "--page-server", "--address", address, "--port", str(port),
                "--images-dir", str(images), "--work-dir", str(work), "-v" + CRIU_LOG_LEVEL,
                "-o", "lazy-pages.log"]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        return cls(proc, work)

    def wait_listening(self) -> None:
        sock = self.work / "lazy-pages.socket"
        deadline = time.monotonic() + LAZY_DAEMON_START_S
        while not sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise errors.LazyPagesError(
                    f"The lazy-pages daemon did not start: {rt.log_excerpt(self.work / 'lazy-pages.log')}")
            time.sleep(0.001)

    def stats(self) -> dict:
        """Pages the daemon had to move, those it moved on faults, and in all. Reads only
        what the log gained since the last call (progress is asked for every 0.2 s)."""
        log_path = self.work / "lazy-pages.log"
        if log_path.exists():
            with open(log_path, "rb") as fh:
                fh.seek(self._log_offset)
                chunk = fh.read()
            end = chunk.rfind(b"\n") + 1          # whole lines only
            self._log_offset += end
            for line in chunk[:end].decode(errors="replace").splitlines():
                if "uffd_copy:" in line:       # one UFFDIO_COPY: "uffd_copy: 0xADDR/BYTES"
                    m = re.search(r"uffd_copy: 0x[0-9a-f]+/(\d+)", line)
                    self._copied_live += int(m.group(1)) // PAGE_SIZE if m else 0
                elif "#PF at" in line:
                    self._faulted += 1
                elif "pages to be handled by UFFD" in line:
                    m = re.search(r"Found (\d+) pages", line)
                    self._total += int(m.group(1)) if m else 0
                elif "UFFD transferred pages" in line:
                    m = re.search(r"\((\d+)/(\d+)\)", line)
                    self._copied += int(m.group(1)) if m else 0
        # the summary line ("transferred pages (x/y)") comes only at the end
        copied = self._copied or self._copied_live
        faulted = min(self._faulted, copied)
        return {"lazy_pages": self._total, "copied_pages": copied, "faulted_pages": faulted,
                "pushed_pages": max(copied - faulted, 0)}

    def wait_connected(self, address: str, port: int, timeout_s: float = LAZY_CONNECT_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not tcp_established(address, port):
            if self.proc.poll() is not None:
                raise errors.LazyPagesError(
                    f"The lazy-pages daemon could not reach the page server {address}:{port}: "
                    f"{rt.log_excerpt(self.work / 'lazy-pages.log')}")
            if time.monotonic() > deadline:
                raise errors.LazyPagesError(
                    f"The lazy-pages daemon did not connect to the page server {address}:{port} "
                    f"within {timeout_s} s.", hint="Check the tunnel between the hosts.")
            time.sleep(0.005)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Restore:
    """``runc restore``, in two steps: ``start`` (with ``gated``, long before the freeze: runc
    does its set-up and CRIU waits, see cloudmig.runtime.gate) and ``go`` + ``finish``
    inside the freeze, once the images and the root file system are in place.

    With ``lazy``, the lazy-pages daemon must reach the page server within
    LAZY_CONNECT_TIMEOUT_S of ``go``, or the restore is abandoned (a daemon that cannot
    fetch pages would leave the restored copy hanging on its first fault)."""

    def __init__(self, runtime: rt.Runtime, name: str, work: Path, proc: subprocess.Popen,
                 pid_file: Path, conf_gate: "gate.ConfigGate | None") -> None:
        self.runtime, self.name, self.work, self.proc = runtime, name, work, proc
        self.pid_file, self.gate = pid_file, conf_gate
        self.gated = conf_gate is not None
        self._bound = False
        self.criu_root = runtime.runc_root / name / "criu-root"   # where runc binds the rootfs
        self.started = time.monotonic()

    @classmethod
    def start(cls, runtime: rt.Runtime, name: str, images: Path, work: Path, *, lazy_pages: bool,
              gated: bool = False, descriptors: list[str] | None = None) -> "Restore":
        b = runtime.bundle(name)
        work.mkdir(parents=True, exist_ok=True)
        images.mkdir(parents=True, exist_ok=True)
        if descriptors is not None:
            # runc reads the container's stdio paths before it starts CRIU; the rest of the
            # images may come later (a gated restore starts before the dump)
            (images / "descriptors.json").write_text(json.dumps(descriptors))
        conf_gate = gate.ConfigGate(b.criu_conf) if gated else None
        if conf_gate is not None:
            conf_gate.arm()
        else:
            gate.settle(b.criu_conf)
        pid_file = work / "restored.pid"
        pid_file.unlink(missing_ok=True)
        argv = _runc_criu(runtime, "restore", "--detach", "--tcp-established", "--image-path",
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
                rt.make_private(r.criu_root)
            except BaseException:
                r.abort()
                raise
        return r

    def bind_rootfs(self) -> None:
        """runc bound the rootfs directory on criu-root when it started, before the rootfs was
        mounted: put the mounted rootfs on top, where CRIU will look (once the rootfs is
        mounted; the images may still be on their way)."""
        if self.gate is not None and not self._bound:
            rt.bind_mount(self.runtime.bundle(self.name).rootfs, self.criu_root)
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

    def finish(self, lazy: "LazyPagesDaemon | None" = None,
               page_server: tuple[str, int] | None = None, steps: Steps | None = None) -> int:
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
                    threading.Thread(target=rt.unmount_private, args=(self.criu_root,),
                                     name=f"unbind-{self.name}", daemon=True).start()
                else:
                    rt.unmount_private(self.criu_root)

    def _finish(self, lazy: "LazyPagesDaemon | None", page_server: tuple[str, int] | None) -> int:
        proc, work = self.proc, self.work
        connected = lazy is None
        while proc.poll() is None:
            if not connected and lazy is not None and page_server is not None:
                connected = tcp_established(*page_server)
                if not connected and (lazy.proc.poll() is not None
                                      or time.monotonic() - self.started > LAZY_CONNECT_TIMEOUT_S):
                    lazy.kill()          # unblocks CRIU, which then fails the restore
                    _wait_or_kill(proc, RESTORE_ABORT_S)
                    raise errors.LazyPagesError(
                        f"The lazy-pages daemon could not reach the page server {page_server[0]}:"
                        f"{page_server[1]}: {rt.log_excerpt(work / 'lazy-pages.log') or 'no connection'}.",
                        hint="Check the tunnel between the hosts (`cloudmig tunnel status`).")
            if time.monotonic() - self.started > RESTORE_TIMEOUT_S:
                _wait_or_kill(proc, 0)
                raise errors.RestoreError(f"The restore did not finish within {RESTORE_TIMEOUT_S} s.")
            time.sleep(0.002)
        if proc.returncode != 0:
            raise errors.RestoreError(
                f"CRIU could not restore the container: {rt.log_excerpt(work / 'restore.log') or rt.log_excerpt(work / 'runc-restore.log')}",
                hint=f"See {work}/restore.log on the destination host.")
        if lazy is not None and page_server is not None and not connected:
            lazy.wait_connected(*page_server)
        # runc wrote the restored init's pid; reading it costs nothing, a `runc state` ~10 ms
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            pid = 0
        if not pid or not rt.process_alive(pid):
            st = self.runtime.state(self.name)
            raise errors.RestoreError(f"The restored container is {st['status']}, not running.")
        return pid

    def abort(self) -> None:
        """Call off a restore that has not been let go, or kill one that hangs."""
        _wait_or_kill(self.proc, 0)
        if self.gate is not None:
            self.gate.settle()
            self.gate = None
        if self.gated:
            remove_runc_leftovers(self.runtime, self.name)


def remove_runc_leftovers(runtime: rt.Runtime, name: str) -> None:
    """What a killed ``runc restore`` leaves: its bind on criu-root and its state directory
    (without which the next restore of this name would find "a container with that ID")."""
    state_dir = runtime.runc_root / name
    rt.unmount_private(state_dir / "criu-root")
    if state_dir.is_dir() and not (state_dir / "state.json").exists():
        shutil.rmtree(state_dir, ignore_errors=True)


def restore(runtime: rt.Runtime, name: str, images: Path, work: Path,
            lazy: "LazyPagesDaemon | None" = None, page_server: tuple[str, int] | None = None) -> int:
    """``runc restore`` at once (rollbacks, stop-and-copy without a gate)."""
    r = Restore.start(runtime, name, images, work, lazy_pages=lazy is not None)
    r.go()
    return r.finish(lazy, page_server)


def _wait_or_kill(proc: subprocess.Popen, timeout_s: float) -> None:
    """Give ``proc`` (a process group leader) ``timeout_s`` to end, then kill its group."""
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait()
