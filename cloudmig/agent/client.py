"""The controller's side of the agent channel.

    client = AgentClient(UnixTransport("/var/lib/cloudmig/hosts/h1/agent.sock"), token, host="h1")
    client.call("ping")            # -> {"version": 1, "host": "h1", ...}

Transports only move lines; the client adds ids, the token and error translation, and lets
several threads call at once over one channel (answers are matched to requests by id). A remote
cloudmig error comes back as the same class (with the remote traceback attached); anything
else as errors.RemoteCallError.
"""

from __future__ import annotations

import collections
import itertools
import logging
import socket
import subprocess
import threading
import typing

from cloudmig import errors
from cloudmig.agent import protocol

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10
DEFAULT_CALL_TIMEOUT_S = 600  # long operations (restore, file sync) answer within this


class Transport(typing.Protocol):
    def send_line(self, data: bytes) -> None: ...
    def recv_line(self) -> bytes: ...
    def close(self) -> None: ...


class UnixTransport:
    """A root-only unix socket on this machine (lab hosts)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            self._sock.connect(path)
        except OSError as exc:
            self._sock.close()
            raise errors.AgentLost(f"Cannot reach the agent at {path}: {exc.strerror or exc}.",
                                    hint="Is the host up? `cloudmig hosts` shows its state.") from exc
        self._sock.settimeout(None)     # the client's reader waits for answers; calls time out
        self._rfile = self._sock.makefile("rb")

    def send_line(self, data: bytes) -> None:
        self._sock.sendall(data)

    def recv_line(self) -> bytes:
        return self._rfile.readline(protocol.MAX_MESSAGE_BYTES + 1)

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)     # wakes the client's reader
        except OSError:
            pass
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
    """One channel to one agent, shared by every caller: requests carry ids, a reader thread
    hands each answer to the call that waits for it, so calls from several threads run at
    once on the same channel (over SSH: one session for the whole migration).

    ``round_trips`` counts the calls made so far (the engine counts those inside the freeze).
    """

    def __init__(self, transport: Transport, token: str, host: str = "?",
                 timeout_s: float = DEFAULT_CALL_TIMEOUT_S) -> None:
        self._transport = transport
        self._token = token
        self.host = host
        self.timeout_s = timeout_s
        self.round_trips = 0
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._lost: str | None = None       # why the channel ended, once it did
        self._reader = threading.Thread(target=self._read, name=f"agent-{host}", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self._lost is None

    def call(self, op: str, **args: typing.Any) -> typing.Any:
        req = protocol.Request(id=next(self._ids), op=op, args=args, token=self._token)
        waiter = _Pending()
        with self._send_lock:
            if self._lost is not None:
                raise self._lost_error(op, self._lost)
            self._pending[req.id] = waiter
            self.round_trips += 1
            try:
                self._transport.send_line(protocol.encode(req.to_wire()))
            except (OSError, socket.timeout) as exc:
                self._pending.pop(req.id, None)
                raise self._lost_error(op, str(exc)) from exc
        if not waiter.done.wait(self.timeout_s):
            self._pending.pop(req.id, None)
            raise errors.AgentError(f"The agent of host {self.host} did not answer {op} within "
                                    f"{self.timeout_s:.0f} s.", hint="Check the host's load and its agent's log.")
        if waiter.response is None:
            raise self._lost_error(op, self._lost or "the channel closed")
        resp = waiter.response
        if resp.ok:
            return resp.result
        raise _to_exception(resp.error or protocol.RemoteError("AgentError", "no error given"), self.host)

    def _read(self) -> None:
        why = "the agent closed the channel"
        try:
            while True:
                line = self._transport.recv_line()
                if not line:
                    break
                resp = protocol.decode_response(line)
                waiter = self._pending.pop(resp.id, None)
                if waiter is None:
                    log.warning("agent of %s answered unknown request %s", self.host, resp.id)
                    continue
                waiter.response = resp
                waiter.done.set()
        except (OSError, ValueError, errors.ProtocolError) as exc:   # ValueError: file closed
            why = str(exc) or type(exc).__name__
        with self._send_lock:
            self._lost = why
            pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.done.set()

    def _lost_error(self, op: str, why: str) -> errors.AgentError:
        return errors.AgentLost(f"Lost the agent of host {self.host} during {op}: {why}.",
                                 hint="Check that the host and its agent are running.")

    def close(self) -> None:
        self._transport.close()
        self._reader.join(timeout=CONNECT_TIMEOUT_S)

    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Pending:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.response: protocol.Response | None = None


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
