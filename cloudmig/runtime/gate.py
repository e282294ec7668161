"""Start runc's checkpoint or restore before the freeze, and let CRIU go on at the freeze.

    gate = ConfigGate(bundle.root / "criu.conf")
    gate.arm()                          # criu.conf becomes a FIFO
    proc = subprocess.Popen(["runc", ..., "restore", ...])
    gate.wait_reader(proc)              # runc did its set-up; CRIU waits in fopen/getline
    ...                                 # the freeze: images arrive, rootfs mounted
    gate.release()                      # CRIU reads its options and works; criu.conf is a file again

runc spends 20-40 ms before CRIU does anything (Go start-up, a CRIU version probe, cgroups,
the rootfs bind for restores), and CRIU a few more loading its kernel-feature cache. All of
that sat inside the freeze. CRIU reads the container's configuration file (the one named by
the ``org.criu.config`` annotation) when it handles runc's request, before it touches a
process or an image: with that file a FIFO, CRIU blocks there until cloudmig writes the
options into it. Only one runc operation runs per container at a time (the agent's
migration ops), so swapping the file under its fixed name is safe; ``settle`` puts the
regular file back whatever happened (a killed agent, an aborted migration).
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import time
from pathlib import Path

from cloudmig import errors
from cloudmig.runtime import criu

READER_TIMEOUT_S = 20        # runc start-up until CRIU opens the config (measured: ~50 ms)


class ConfigGate:
    def __init__(self, conf: Path) -> None:
        self.conf = conf
        self.text = ""
        self._fd: int | None = None

    def arm(self) -> None:
        settle(self.conf)
        self.text = self.conf.read_text() if self.conf.exists() else ""
        fifo = self.conf.with_name(self.conf.name + ".fifo")
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo, 0o600)
        os.replace(fifo, self.conf)
        _saved(self.conf).write_text(self.text)    # for a later settle by another process

    def wait_reader(self, proc: subprocess.Popen, what: str, log: Path,
                    timeout_s: float = READER_TIMEOUT_S) -> None:
        """Return once CRIU has the FIFO open (so runc's set-up is done); fail if runc ended."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._fd = os.open(self.conf, os.O_WRONLY | os.O_NONBLOCK)
                return
            except OSError as exc:
                if exc.errno != errno.ENXIO:      # ENXIO: no reader yet
                    raise
            if proc.poll() is not None:
                self.settle()
                raise criu.failure(errors.CheckpointError, f"runc {what} ended before CRIU started",
                                   [log], side="this")
            if time.monotonic() > deadline:
                self.settle()
                raise errors.CheckpointError(f"CRIU did not start within {timeout_s} s of runc {what}.")
            time.sleep(0.001)

    def release(self) -> None:
        """CRIU reads its options now and goes on."""
        if self._fd is None:
            raise errors.CheckpointError("Released a CRIU gate that nobody waits at.")
        try:
            data = self.text.encode()
            while data:
                data = data[os.write(self._fd, data):]
        finally:
            os.close(self._fd)
            self._fd = None
            settle(self.conf, self.text)

    def settle(self) -> None:
        """Give up: close our end (CRIU, if it still waits, reads nothing) and restore the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        settle(self.conf, self.text)


def settle(conf: Path, text: str | None = None) -> None:
    """Make ``conf`` a regular file again if a gate left a FIFO there."""
    try:
        st = os.lstat(conf)
    except FileNotFoundError:
        return
    if not stat.S_ISFIFO(st.st_mode):
        return
    if text is None:
        saved = _saved(conf)
        text = saved.read_text() if saved.exists() else ""
    tmp = conf.with_name(conf.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, conf)
    _saved(conf).unlink(missing_ok=True)


def _saved(conf: Path) -> Path:
    return conf.with_name(conf.name + ".saved")
