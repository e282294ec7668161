"""`cloudmig doctor`: one line per readiness check, with a fix hint."""

from __future__ import annotations

import dataclasses

import typer

from cloudmig import doctor as checks_mod
from cloudmig.cli._app import app, console, print_json

_MARK = {"pass": "[green]pass[/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}


@app.command()
def doctor(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Check that this machine can run and receive cloudmig containers."""
    checks = checks_mod.run_checks()
    failed = [c for c in checks if c.failed]
    if json_out:
        print_json({"ok": not failed, "checks": [dataclasses.asdict(c) for c in checks]})
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            line = f"{_MARK[c.status]}  {c.name:<{width}}  {c.detail}"
            if c.hint and c.status != "pass":
                line += f"\n      {'':<{width}}  fix: {c.hint}"
            console.print(line, highlight=False)
        if failed:
            console.print(f"\n{len(failed)} required check(s) failed: "
                          + ", ".join(c.name for c in failed))
        else:
            console.print("\nThis machine is ready for cloudmig.")
    if failed:
        raise typer.Exit(1)
