"""The typer application object and what every command shares."""

from __future__ import annotations

import json
import typing

import typer
from rich.console import Console

from cloudmig import log

app = typer.Typer(
    name="cloudmig",
    help="Live-migrate Linux containers between machines and clouds without disconnecting their clients.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
) -> None:
    log.setup(verbose=debug)


def print_json(data: typing.Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
