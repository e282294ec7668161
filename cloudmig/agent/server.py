"""The agent's request loop: authenticate, check the version, dispatch, report errors.

    server = AgentServer(token=token, handlers=ops.handlers(host_dir))
    server.serve_unix("/var/lib/cloudmig/hosts/h1/agent.sock")   # or serve_stream(stdin, stdout)

Handlers are plain functions ``op(**args) -> JSON-able``; any exception they raise goes back
to the controller with its type, message and traceback.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import socketserver
import threading
import traceback
import typing

from cloudmig import errors
from cloudmig.agent import protocol

log = logging.getLogger(__name__)

Handler = typing.Callable[..., typing.Any]


class AgentServer:
    def __init__(self, token: str, handlers: dict[str, Handler]) -> None:
        if not token:
            raise errors.ConfigError("The agent needs a non-empty token.")
        self._token = token
        self._handlers = handlers
        self._unix_server: socketserver.ThreadingUnixStreamServer | None = None

    # -------------------------------------------------------------- one message
    def handle_line(self, line: bytes) -> dict:
        rid = -1
        try:
            req = protocol.decode_request(line)
            rid = req.id
            if not hmac.compare_digest(req.token.encode(), self._token.encode()):
                raise errors.AuthError("The agent refused the request: wrong or missing token.",
                                       hint="Check the host's token file.")
            handler = self._handlers.get(req.op)
            if handler is None:
                raise errors.ProtocolError(f"The agent has no operation {req.op!r}.")
            result = handler(**req.args)
            return protocol.Response(id=rid, ok=True, result=protocol.jsonable(result)).to_wire()
        except Exception as exc:  # every failure goes back to the controller, typed
            if not isinstance(exc, errors.CloudmigError):
                log.exception("agent operation failed")
            return protocol.Response(id=rid, ok=False, error=protocol.RemoteError(
                type=type(exc).__name__, message=getattr(exc, "message", None) or str(exc),
                hint=getattr(exc, "hint", None), traceback=traceback.format_exc())).to_wire()

    # -------------------------------------------------------------- transports
    def serve_stream(self, rfile: typing.BinaryIO, wfile: typing.BinaryIO) -> None:
        """Serve one connection (a socket's files, or stdin/stdout under SSH) until EOF. Each
        request runs in a thread of its own and answers when done, so one channel carries
        concurrent calls (the controller keeps one channel per host); answers carry the id."""
        write_lock = threading.Lock()
        running: list[threading.Thread] = []

        def answer(line: bytes) -> None:
            data = protocol.encode(self.handle_line(line))
            with write_lock:
                try:
                    wfile.write(data)
                    wfile.flush()
                except (BrokenPipeError, ConnectionResetError, ValueError):
                    pass     # the controller went away; its request still ran to the end

        for line in iter(lambda: rfile.readline(protocol.MAX_MESSAGE_BYTES + 1), b""):
            if not line.strip():
                continue
            t = threading.Thread(target=answer, args=(line,), name="agent-request", daemon=True)
            t.start()
            running = [r for r in running if r.is_alive()] + [t]
        for t in running:
            t.join()

    def serve_unix(self, path: str, ready: threading.Event | None = None) -> None:
        """Serve on a root-only unix socket until shutdown() is called."""
        server_self = self

        class _Conn(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                try:
                    server_self.serve_stream(self.rfile, self.wfile)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        if os.path.exists(path):
            os.unlink(path)
        old_umask = os.umask(0o077)
        try:
            srv = socketserver.ThreadingUnixStreamServer(path, _Conn)
        finally:
            os.umask(old_umask)
        srv.daemon_threads = True
        os.chmod(path, 0o600)
        self._unix_server = srv
        if ready is not None:
            ready.set()
        try:
            srv.serve_forever(poll_interval=0.2)
        finally:
            srv.server_close()
            if os.path.exists(path):
                os.unlink(path)

    def shutdown(self) -> None:
        if self._unix_server is not None:
            self._unix_server.shutdown()


def probe_unix(path: str) -> bool:
    """True if something accepts connections on the unix socket at ``path``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()
