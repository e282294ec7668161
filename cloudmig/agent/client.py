"""The controller's side of the agent channel.

    client = AgentClient(UnixTransport("/var/lib/cloudmig/hosts/h1/agent.sock"), token, host="h1")
    client.call("ping")            # -> {"version": 1, "host": "h1", ...}

Transports only move lines; the client adds ids, the token and error translation. A remote
cloudmig error comes back as the same class (with the remote traceback attached); anything
else as errors.RemoteCallError.
"""

from __future__ import annotations

import collections
import itertools
import socket
import subprocess
import threading
import typing

from cloudmig import errors
from cloudmig.agent import protocol

CONNECT_TIMEOUT_S = 10
DEFAULT_CALL_TIMEOUT_S = 600  # long operations (restore, file sync) answer within this


class Transport(typing.Protocol):
    def send_line(self, data: bytes) -> None: ...
    def recv_line(self) -> bytes: ...
    def close(self) -> None: ...


class UnixTransport:
    """A root-only unix socket on this machine (lab hosts)."""

    def __init__(self, path: str, timeout_s: float = DEFAULT_CALL_TIMEOUT_S) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            self._sock.connect(path)
        except OSError as exc:
            self._sock.close()
            raise errors.AgentError(f"Cannot reach the agent at {path}: {exc.strerror or exc}.",
                                    hint="Is the host up? `cloudmig hosts` shows its state.") from exc
        self._sock.settimeout(timeout_s)
        self._rfile = self._sock.makefile("rb")

    def send_line(self, data: bytes) -> None:
        self._sock.sendall(data)

    def recv_line(self) -> bytes:
        return self._rfile.readline(protocol.MAX_MESSAGE_BYTES + 1)

    def close(self) -> None:
        self._rfile.close()
        self._sock.close()


class CommandTransport:
    """An agent channel on the stdio of a command: `ssh user@host cloudmig agent connect ...`.

    If the command ends (ssh could not connect, the relay found no agent), the end of its
    stderr becomes the error, so the user sees why.
    """

    STDERR_KEEP_LINES = 5

    def __init__(self, argv: list[str]) -> None:
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
        self._stderr: collections.deque[str] = collections.deque(maxlen=self.STDERR_KEEP_LINES)
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()

    def _read_stderr(self) -> None:
        for raw in self._proc.stderr:  # type: ignore[union-attr]  (PIPE above)
            line = raw.decode(errors="replace").strip()
            if line:
                self._stderr.append(line)

    def send_line(self, data: bytes) -> None:
        try:
            self._proc.stdin.write(data)  # type: ignore[union-attr]  (PIPE above)
            self._proc.stdin.flush()  # type: ignore[union-attr]
        except BrokenPipeError:
            raise self._ended() from None

    def recv_line(self) -> bytes:
        line = self._proc.stdout.readline(protocol.MAX_MESSAGE_BYTES + 1)  # type: ignore[union-attr]
        if not line:
            raise self._ended()
        return line

    def _ended(self) -> ConnectionError:
        try:
            rc = self._proc.wait(timeout=CONNECT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            rc = None
        self._drain.join(timeout=1)
        why = " / ".join(self._stderr) or "no message"
        return ConnectionError(f"{self._proc.args[0]} ended (exit {rc}): {why}")

    def close(self) -> None:
        if self._proc.stdin:
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


class AgentClient:
    def __init__(self, transport: Transport, token: str, host: str = "?") -> None:
        self._transport = transport
        self._token = token
        self.host = host
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def call(self, op: str, **args: typing.Any) -> typing.Any:
        req = protocol.Request(id=next(self._ids), op=op, args=args, token=self._token)
        with self._lock:
            try:
                self._transport.send_line(protocol.encode(req.to_wire()))
                line = self._transport.recv_line()
            except (OSError, socket.timeout) as exc:
                raise errors.AgentError(f"Lost the agent of host {self.host} during {op}: {exc}.",
                                        hint="Check that the host and its agent are running.") from exc
        if not line:
            raise errors.AgentError(f"The agent of host {self.host} closed the channel during {op}.",
                                    hint="Check that the host and its agent are running.")
        resp = protocol.decode_response(line)
        if resp.id != req.id:
            raise errors.ProtocolError(f"Agent of {self.host} answered request {resp.id}, expected {req.id}.")
        if resp.ok:
            return resp.result
        raise _to_exception(resp.error or protocol.RemoteError("AgentError", "no error given"), self.host)

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _to_exception(err: protocol.RemoteError, host: str) -> errors.CloudmigError:
    cls = errors.by_name(err.type)
    if cls is not None and cls is not errors.RemoteCallError:
        try:
            exc = cls(err.message, hint=err.hint)
        except TypeError:
            exc = None
        if exc is not None:
            exc.remote_traceback = err.traceback  # type: ignore[attr-defined]
            exc.host = host  # type: ignore[attr-defined]
            return exc
    return errors.RemoteCallError(f"Host {host}: {err.type}: {err.message}", remote_type=err.type,
                                  remote_traceback=err.traceback, host=host)
