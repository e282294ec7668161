"""The relay an SSH session runs: stdin/stdout copied to and from the agent daemon's socket.

    relay.run("/var/lib/cloudmig-agent/agent.sock")     # until either side closes

Every agent channel to an SSH host starts one (``cloudmig agent connect --socket S``), so it
imports nothing but the standard library and cloudmig.errors: the console script takes this
path before it loads the command line (see cloudmig.cli.main).
"""

from __future__ import annotations

import os
import socket as socketlib
import threading

from cloudmig import errors

CHUNK_BYTES = 64 * 1024


def run(path: str) -> None:
    sock = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise errors.AgentError(f"No agent answers on {path}: {exc.strerror or exc}.",
                                hint="Start it again: cloudmig host add NAME --ssh ... (re-adopting "
                                     "restarts the agent).") from exc

    def upstream() -> None:
        try:
            while chunk := os.read(0, CHUNK_BYTES):
                sock.sendall(chunk)
        except OSError:
            pass
        try:
            sock.shutdown(socketlib.SHUT_WR)    # the agent sees EOF and ends the session
        except OSError:
            pass

    threading.Thread(target=upstream, daemon=True).start()
    try:
        while chunk := sock.recv(CHUNK_BYTES):
            view = memoryview(chunk)
            while view:
                view = view[os.write(1, view):]
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sock.close()


def argv_socket(args: list[str]) -> str | None:
    """The socket of ``agent connect --socket S`` (or ``--socket=S``) and nothing else; None
    for any other command line, which the full command line then handles."""
    if args[:2] != ["agent", "connect"]:
        return None
    rest = args[2:]
    if len(rest) == 2 and rest[0] == "--socket" and rest[1] and not rest[1].startswith("-"):
        return rest[1]
    if len(rest) == 1 and rest[0].startswith("--socket=") and len(rest[0]) > len("--socket="):
        return rest[0][len("--socket="):]
    return None
