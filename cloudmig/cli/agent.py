"""`cloudmig agent serve|stdio|connect`: the host agent. Providers start it; users rarely do.

    cloudmig agent serve --host s1 --host-dir D --token-file T --socket S   # the daemon
    cloudmig agent connect --socket S      # relay stdin/stdout to it (what SSH sessions run)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from cloudmig import errors, log, signals
from cloudmig.cli._app import app

agent_app = typer.Typer(help="Run the host agent (started by providers, rarely by hand).",
                        no_args_is_help=True)
app.add_typer(agent_app, name="agent")


def _server(host: str, host_dir: Path, token_file: Path, cgroup_parent: str,
            netns_prefix: str):
    from cloudmig.agent import ops, server   # heavy (runtime, netlink): not for `agent connect`
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        raise errors.ConfigError(f"Cannot read the agent token file {token_file}: {exc.strerror}.") from exc
    if token_file.stat().st_mode & 0o077:
        raise errors.ConfigError(f"The agent token file {token_file} must be mode 0600.",
                                 hint=f"chmod 600 {token_file}")
    host_dir.mkdir(parents=True, exist_ok=True)
    from cloudmig.runtime import criu
    criu.ensure_kdat_cache()
    criu.ensure_favordynmods()
    handlers = ops.AgentOps(host=host, host_dir=host_dir, cgroup_parent=cgroup_parent,
                        netns_prefix=netns_prefix).handlers()
    return server.AgentServer(token=token, handlers=handlers)


_HOST = typer.Option(..., "--host", help="This host's name.")
_DIR = typer.Option(..., "--host-dir", help="Where this host keeps containers, images and CRIU images.")
_TOKEN = typer.Option(..., "--token-file", help="File (mode 0600) holding the agent token.")
_CGROUP = typer.Option("/cloudmig", "--cgroup-parent", help="Parent cgroup of the containers.")
_PREFIX = typer.Option("cm", "--netns-prefix", help="Prefix of container network namespace names.")


@agent_app.command("serve")
def serve(host: str = _HOST, host_dir: Path = _DIR, token_file: Path = _TOKEN,
          socket: Path = typer.Option(..., "--socket", help="Unix socket to listen on (root only)."),
          cgroup_parent: str = _CGROUP, netns_prefix: str = _PREFIX) -> None:
    """Serve the controller on a root-only unix socket."""
    log.setup(verbose=bool(os.environ.get("CLOUDMIG_AGENT_DEBUG")))
    srv = _server(host, host_dir, token_file, cgroup_parent, netns_prefix)
    signals.on_sigterm(lambda: sys.exit(0))   # unwinds serve_unix, which removes the socket
    srv.serve_unix(str(socket))


@agent_app.command("stdio")
def stdio(host: str = _HOST, host_dir: Path = _DIR, token_file: Path = _TOKEN,
          cgroup_parent: str = _CGROUP, netns_prefix: str = _PREFIX) -> None:
    """Serve the controller on stdin/stdout (the SSH transport)."""
    srv = _server(host, host_dir, token_file, cgroup_parent, netns_prefix)
    srv.serve_stream(sys.stdin.buffer, sys.stdout.buffer)


@agent_app.command("connect")
def connect(socket: Path = typer.Option(..., "--socket", help="The agent daemon's unix socket.")) -> None:
    """Relay stdin/stdout to the agent daemon's socket (the SSH transport runs this)."""
    from cloudmig.agent import relay
    relay.run(str(socket))
