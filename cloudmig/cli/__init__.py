"""The `cloudmig` command line.

    $ cloudmig doctor
    $ cloudmig lab up --hosts 3
    $ cloudmig run h1 web --publish 8080 -- python3 -m http.server 8080
    $ cloudmig migrate web --to h2 --report report.json

Errors print ``Error: ...`` and exit with the error's own code; ``--debug`` shows the
traceback too.

The commands load on first use of ``app`` (or in ``main``, only the module of the command
given), not on import: ``cloudmig agent connect --socket S``, which every SSH session to an
agent runs, relays without them.
"""

from __future__ import annotations

import importlib
import sys
import traceback

from cloudmig import errors

__all__ = ["app", "main"]


# the module that registers each top-level command (or group): a command loads its own
# module only. Loading them all costs ~0.35 s here, paid by every `cloudmig` a script or an
# agent start runs (the lab's agents are `cloudmig agent serve`); tests/test_cli.py checks
# that this map names every command the modules register.
COMMAND_MODULES = {
    "agent": "agent", "bench": "bench", "doctor": "doctor", "lab": "lab", "setup": "setup", "tunnel": "tunnel",
    "run": "containers", "ps": "containers", "logs": "containers", "rm": "containers",
    "hosts": "hosts", "host": "hosts", "migrate": "migrate", "recover": "migrate",
    "plan": "plan", "evacuate": "plan", "rebalance": "plan",
}


def _load_app(args: list[str] | None = None):
    """The typer app with the commands ``args`` need: its command's module, or (for help, a
    typo, no command) every module."""
    from cloudmig.cli import _app
    command = next((a for a in args or [] if not a.startswith("-")), None)
    for module in ([COMMAND_MODULES[command]] if command in COMMAND_MODULES
                   else sorted(set(COMMAND_MODULES.values()))):
        importlib.import_module(f"cloudmig.cli.{module}")      # registers its commands
    return _app.app


def __getattr__(name: str):
    if name == "app":
        return _load_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _relay(socket: str) -> int:
    """``agent connect``'s fast path: the relay alone (see cloudmig.agent.relay)."""
    from cloudmig.agent import relay
    try:
        relay.run(socket)
    except errors.CloudmigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    from cloudmig.agent.relay import argv_socket
    socket = argv_socket(args)
    if socket is not None:
        return _relay(socket)
    from rich.markup import escape

    from cloudmig.cli import _app
    app = _load_app(args)
    debug = "--debug" in args
    try:
        # standalone mode: typer/click handle usage errors and --help themselves and
        # always end in SystemExit; our own errors come through untouched.
        app(args=args, prog_name="cloudmig")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except errors.CloudmigError as exc:
        if debug:
            traceback.print_exc()
        _app.err_console.print(f"[bold red]Error:[/] {escape(str(exc))}", highlight=False)
        remote_tb = getattr(exc, "remote_traceback", "")
        if debug and remote_tb:
            _app.err_console.print(f"Remote traceback:\n{remote_tb}", highlight=False, markup=False)
        return exc.exit_code
    except KeyboardInterrupt:
        _app.err_console.print("Interrupted.")
        return 130
    return 0


def run() -> None:
    sys.exit(main())
