"""`cloudmig setup`: make this machine able to run and receive containers (root)."""

from __future__ import annotations

import typer
from rich.markup import escape

from cloudmig import distribution
from cloudmig.cli._app import app, console


@app.command()
def setup(keep_ssh: bool = typer.Option(False, "--keep-ssh",
                                        help="Leave sshd running (hosts the controller reaches over SSH).")) -> None:
    """Install what cloudmig needs here: packages, CRIU >= 4.2, wireguard-go, kernel settings,
    pycriu. Safe to run again: finished steps are skipped."""
    distribution.setup_this_machine(lambda line: console.print(f"  {escape(line)}"), keep_ssh=keep_ssh)
    console.print("[bold green]this machine is ready[/] (`cloudmig doctor` checks it)")
