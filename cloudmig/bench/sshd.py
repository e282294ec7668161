"""A real sshd inside a lab host's network namespace: the bench's SSH transport and the
adoption tests reach lab hosts through it as if they were other machines.

    sshd = Sshd(tmp_path / "sshd", netns="t1ab-h1", address="198.18.7.11")
    sshd.start()                    # host key, client key, config; root by key only
    ... ssh -i sshd.client_key -p 2222 root@198.18.7.11 ...
    sshd.stop()                     # the daemon and every session it forked
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from cloudmig import errors

SSHD = "/usr/sbin/sshd"
SSHD_PORT = 2222
PRIVSEP_DIR = Path("/run/sshd")     # sshd refuses to start without it
START_TIMEOUT_S = 10


def keygen(path: Path, comment: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True)
    return path


class Sshd:
    def __init__(self, workdir: Path, netns: str, address: str, port: int = SSHD_PORT) -> None:
        self.dir, self.netns, self.address, self.port = workdir, netns, address, port
        self.host_key = workdir / "host_ed25519"
        self.client_key = workdir / "client_ed25519"
        self.config = workdir / "sshd_config"
        self.log = workdir / "sshd.log"
        self.proc: subprocess.Popen | None = None
        self._made_privsep = False
        self._netns_inode = os.stat(f"/run/netns/{netns}").st_ino

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        keygen(self.host_key, "test-host")
        keygen(self.client_key, "test-controller")
        (self.dir / "authorized_keys").write_text(Path(f"{self.client_key}.pub").read_text())
        self.config.write_text(
            f"PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            f"PubkeyAuthentication yes\nAuthorizedKeysFile {self.dir}/authorized_keys\n"
            # the key file sits below /tmp (mode 1777), which StrictModes would refuse
            f"StrictModes no\nUsePAM no\nPidFile {self.dir}/sshd.pid\nPrintMotd no\nAcceptEnv none\n")
        if not PRIVSEP_DIR.exists():
            PRIVSEP_DIR.mkdir(mode=0o755)
            self._made_privsep = True
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.netns}", SSHD, "-D", "-e", "-p", str(self.port),
                 "-o", f"ListenAddress={self.address}", "-f", str(self.config), "-h", str(self.host_key)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise errors.HostSetupError(f"sshd exited at start: {self.log.read_text()}")
            try:
                socket.create_connection((self.address, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise errors.HostSetupError(f"sshd did not listen on {self.address}:{self.port}: {self.log.read_text()}")

    def host_public_key(self) -> str:
        return Path(f"{self.host_key}.pub").read_text().split()[1]

    def processes(self) -> list[int]:
        """sshd processes in our namespace: the daemon and the sessions it forked."""
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if (os.readlink(f"/proc/{pid}/exe") == SSHD
                        and os.stat(f"/proc/{pid}/ns/net").st_ino == self._netns_inode):
                    found.append(int(pid))
            except OSError:
                continue
        return found

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._made_privsep:
            try:
                PRIVSEP_DIR.rmdir()
            except OSError:
                pass
