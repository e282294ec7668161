"""`cloudmig lab up|down`: hosts as network namespaces on this machine."""

from __future__ import annotations

import typer

from cloudmig.cli._app import app, console

lab_app = typer.Typer(help="The lab: hosts as network namespaces on this machine.", no_args_is_help=True)
app.add_typer(lab_app, name="lab")


def _provider():
    from cloudmig.providers.lab import LabProvider
    return LabProvider()


@lab_app.command("up")
def up(hosts: int = typer.Option(2, "--hosts", help="Number of hosts (h1..hN)."),
       wan_rate: str = typer.Option(None, "--wan-rate", help="Shape each host's WAN link, e.g. 200mbit.")) -> None:
    """Create lab hosts h1..hN, each with a public address and an agent. Idempotent."""
    from cloudmig.providers.lab.topology import parse_rate
    rate = parse_rate(wan_rate) if wan_rate else None
    records = _provider().up(hosts=hosts, rate_bps=rate, progress=lambda line: console.print(line))
    console.print(f"lab ready: {', '.join(f'{r.name}={r.public_address}' for r in records)}")


@lab_app.command("down")
def down() -> None:
    """Remove every lab host, namespace, link, mount, cgroup and process."""
    from cloudmig.control import hosts
    hosts.lab_down(progress=lambda line: console.print(line))
    console.print("lab removed")
