"""Run shell scripts on a host over SSH, with ssh's failures turned into sentences.

    sess = Session(record)                      # ssh_target, port, identity, pinned known_hosts
    sess.run("uname -r").stdout                 # root's sh -c on the host (sudo -n if not root)
    sess.run("cat > /x", input=b"...")          # data on stdin, never in the command line

Errors: unreachable, key refused, host key changed, no passwordless sudo -> ProviderError
naming the fix; a script that fails -> ProviderError with its stderr's last lines.
"""

from __future__ import annotations

import dataclasses
import subprocess
import threading
from typing import Callable

from cloudmig import errors
from cloudmig.agent import dial
from cloudmig.inventory import HostRecord

DEFAULT_TIMEOUT_S = 120
SSH_FAILED = 255            # ssh's own exit status when it could not run the command
ERROR_TAIL_LINES = 5


@dataclasses.dataclass
class Result:
    rc: int
    stdout: str
    stderr: str


def _ssh_failure(record: HostRecord, stderr: str) -> errors.ProviderError:
    target = record.agent.get("ssh_target", "?")
    port = record.agent.get("port", "22")
    text = stderr.strip().splitlines()
    last = text[-1] if text else "no message"
    if "Permission denied" in stderr:
        return errors.ProviderError(
            f"{target} (port {port}) refused our SSH key ({last}).",
            hint="Pass the right key with --identity FILE and check that its public half is in the "
                 "user's ~/.ssh/authorized_keys on the host.", code="ssh-auth")
    if "IDENTIFICATION HAS CHANGED" in stderr or "Host key verification failed" in stderr:
        return errors.ProviderError(
            f"The SSH host key of {target} is not the one pinned on first adoption "
            f"({dial.known_hosts_file(record)}).",
            hint="If the machine was reinstalled, delete its line from that file and adopt it again; "
                 "otherwise someone else answers at that address.", code="ssh-hostkey")
    return errors.ProviderError(
        f"Cannot reach {target} over SSH on port {port} ({last}).",
        hint="Check the address and --port, that sshd runs there, and that this machine may reach it.",
        code="ssh-unreachable")


class Session:
    def __init__(self, record: HostRecord) -> None:
        self.record = record

    def run(self, script: str, *, input: bytes | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
            check: bool = True, what: str = "a command", on_line: Callable[[str], None] | None = None) -> Result:
        """Run ``script`` with root's ``sh -c`` on the host; ``on_line`` gets stdout lines as they come."""
        argv = dial.ssh_argv(self.record, ["sh", "-c", script])
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=False)
        out_lines: list[str] = []
        err_chunks: list[bytes] = []

        def read_stdout() -> None:
            for raw in proc.stdout:  # type: ignore[union-attr]
                line = raw.decode(errors="replace").rstrip("\n")
                out_lines.append(line)
                if on_line:
                    on_line(line)

        def read_stderr() -> None:
            err_chunks.append(proc.stderr.read())  # type: ignore[union-attr]

        readers = [threading.Thread(target=read_stdout, daemon=True),
                   threading.Thread(target=read_stderr, daemon=True)]
        for t in readers:
            t.start()
        try:
            if input:
                proc.stdin.write(input)  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise errors.ProviderError(f"{what} on {self.record.name} did not finish within {timeout_s:.0f} s.",
                                       hint="Check the host's load and network, then try again.") from None
        for t in readers:
            t.join(timeout=5)
        res = Result(rc=rc, stdout="\n".join(out_lines), stderr=b"".join(err_chunks).decode(errors="replace"))
        if rc == SSH_FAILED and not res.stdout:
            raise _ssh_failure(self.record, res.stderr)
        if rc != 0 and self.record.agent.get("sudo") == "1" and "sudo:" in res.stderr:
            raise errors.ProviderError(
                f"{self.record.agent.get('ssh_target')} is not root and cannot use sudo without a password "
                f"({res.stderr.strip().splitlines()[-1]}).",
                hint="Adopt as root@ADDRESS, or allow this user passwordless sudo on the host.", code="ssh-sudo")
        if check and rc != 0:
            tail = " / ".join((res.stderr.strip().splitlines() or res.stdout.splitlines() or ["no output"])
                              [-ERROR_TAIL_LINES:])
            raise errors.ProviderError(f"{what} failed on {self.record.name} (exit {rc}): {tail}",
                                       hint="Fix the cause on the host, then run the same command again.")
        return res
