"""Processes on this host: liveness, logs, and ending process groups.

    procs.process_alive(pid)                  # neither gone nor a zombie
    procs.wait_or_kill(proc, 1.0)             # a group leader gets 1 s, then its group is killed
    procs.kill_groups_mentioning(work_dir)    # an earlier agent's runc and criu
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import time
from pathlib import Path


def log_excerpt(path: Path, lines: int = 3) -> str:
    """The last error lines of a log (or its last lines), joined on one line; "" if unreadable."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    errs = [line for line in text if "Error" in line or "error" in line]
    return " / ".join((errs or text)[-lines:])


def process_alive(pid: int) -> bool:
    """Does ``pid`` exist and is it neither a zombie nor dead?"""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


def wait_or_kill(proc: subprocess.Popen, timeout_s: float) -> None:
    """Give ``proc`` (a process group leader) ``timeout_s`` to end, then kill its group."""
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait()


def kill_groups_mentioning(text: str) -> None:
    """Kill every process whose command line mentions ``text``, with its process group when
    it leads one (a runc started in its own session takes its criu along)."""
    for pid in pids_mentioning(text):
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, 9)
            else:
                os.kill(pid, 9)
        except OSError:
            pass


def pids_mentioning(text: str) -> list[int]:
    """Live processes whose command line mentions ``text`` (not this one)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if text.encode() in fh.read() and process_alive(int(entry)):
                    found.append(int(entry))
        except OSError:
            continue
    return found


@contextlib.contextmanager
def exit_waiter(proc: subprocess.Popen):
    """``wait(timeout_s)``: sleep that long, or less if ``proc`` exits meanwhile (a pidfd)."""
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:                  # gone and reaped already: nothing to wait for
        fd = None

    def wait(timeout_s: float) -> None:
        if fd is None:
            time.sleep(timeout_s)
        else:
            select.select([fd], [], [], timeout_s)
    try:
        yield wait
    finally:
        if fd is not None:
            os.close(fd)


class Orphan:
    """Processes an earlier agent started (its children once; not ours to wait for), found
    by a path their command lines mention: alive or gone, waited for by polling."""

    POLL_S = 0.1

    def __init__(self, mentions: str) -> None:
        self.mentions = mentions

    @property
    def alive(self) -> bool:
        return bool(pids_mentioning(self.mentions))

    def wait(self, timeout_s: float | None = None) -> None:
        """Return once they are gone; subprocess.TimeoutExpired after ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.alive:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.mentions, timeout_s)
            time.sleep(self.POLL_S)

    def kill(self) -> None:
        kill_groups_mentioning(self.mentions)
