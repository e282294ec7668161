"""CRIU's lazy-pages daemon on the destination: page faults served from the source's page
server, then every remaining page pulled in the background; it exits when all arrived.

    daemon = LazyPagesDaemon.spawn(images, work, "100.64.0.1", 27000)
    daemon.wait_listening()        # before the restore that needs it
    daemon.stats()                 # {"lazy_pages": ..., "copied_pages": ..., ...}
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from cloudmig import errors
from cloudmig.runtime import criu, procs, sockets

LAZY_DAEMON_START_S = 10             # lazy-pages daemon creating its socket
LAZY_CONNECT_TIMEOUT_S = 3           # from the restore's start; the daemon connects within this
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class LazyPagesDaemon:
    def __init__(self, proc: subprocess.Popen | None, work: Path) -> None:
        self.proc, self.work = proc, work
        # a daemon an earlier agent started (``adopt``): found by its work directory
        self.orphan = procs.Orphan(str(work)) if proc is None else None
        self._orphan_rc: int | None = None
        self._log_offset = self._total = self._faulted = self._copied = self._copied_live = 0

    @classmethod
    def adopt(cls, work: Path) -> "LazyPagesDaemon":
        """The daemon of an agent that died since, still pulling pages (or gone)."""
        return cls(None, work)

    @property
    def returncode(self) -> int | None:
        """None while it runs; its exit code once it ended (an adopted one: 0 if its log
        ends with the transfer's summary, 1 if not: it did not finish)."""
        if self.proc is not None:
            return self.proc.poll()
        if self._orphan_rc is None and not self.orphan.alive:
            # once, while its log is there (finishing removes the directory with the log)
            self._orphan_rc = 0 if self.complete_in_log() else 1
        return self._orphan_rc

    def complete_in_log(self) -> bool:
        try:
            return b"UFFD transferred pages" in self.log.read_bytes()
        except OSError:
            return False

    def wait(self, timeout_s: float | None = None) -> int:
        if self.proc is not None:
            return self.proc.wait(timeout=timeout_s)
        self.orphan.wait(timeout_s)
        return self.returncode or 0

    @property
    def log(self) -> Path:
        return self.work / "lazy-pages.log"

    @classmethod
    def spawn(cls, images: Path, work: Path, address: str, port: int) -> "LazyPagesDaemon":
        """Start the daemon; ``wait_listening`` before a restore needs it (other work in between)."""
        work.mkdir(parents=True, exist_ok=True)
        (work / "lazy-pages.socket").unlink(missing_ok=True)
        argv = [criu.path(), "lazy-pages", "--page-server", "--address", address, "--port", str(port),
                "--images-dir", str(images), "--work-dir", str(work), "-v" + criu.CRIU_LOG_LEVEL,
                "-o", "lazy-pages.log"]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        return cls(proc, work)

    def wait_listening(self) -> None:
        """Return once the daemon accepts the restore's connection. Its socket file appears at
        bind(), before listen(): a restore that connects in between is refused (seen under
        load: "uffd: connect to lazy-pages.socket failed: Connection refused")."""
        sock = self.work / "lazy-pages.socket"
        deadline = time.monotonic() + LAZY_DAEMON_START_S
        while not (sock.exists() and sockets.unix_listening(self.proc.pid)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise criu.failure(errors.LazyPagesError, "The lazy-pages daemon did not start",
                                   [self.log], side="destination")
            time.sleep(0.001)

    def unreachable(self, address: str, port: int) -> errors.LazyPagesError:
        return criu.failure(errors.LazyPagesError,
                            f"The lazy-pages daemon could not reach the page server {address}:{port}",
                            [self.log], side="destination", fallback="no connection",
                            hint="Check the tunnel between the hosts (`cloudmig tunnel status`).")

    def wait_connected(self, address: str, port: int, timeout_s: float = LAZY_CONNECT_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not sockets.tcp_established(address, port):
            if self.proc.poll() is not None:
                raise self.unreachable(address, port)
            if time.monotonic() > deadline:
                raise errors.LazyPagesError(
                    f"The lazy-pages daemon did not connect to the page server {address}:{port} "
                    f"within {timeout_s} s.", hint="Check the tunnel between the hosts.")
            time.sleep(0.005)

    @property
    def done(self) -> bool:
        return self.returncode is not None

    def stats(self) -> dict:
        """Pages the daemon had to move, those it moved on faults, and in all. Reads only
        what the log gained since the last call (progress is asked for every 0.2 s)."""
        if self.log.exists():
            with open(self.log, "rb") as fh:
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

    def kill(self) -> None:
        if self.proc is None:
            self.orphan.kill()
        elif self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
