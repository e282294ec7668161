"""`cloudmig run|ps|logs|rm`: containers on hosts."""

from __future__ import annotations

import typer
from rich.table import Table

from cloudmig.cli._app import app, console, err_console, print_json
from cloudmig.control import containers
from cloudmig.migration.journal import Journal


@app.command()
def run(host: str = typer.Argument(..., help="Host to run on (see `cloudmig hosts`)."),
        name: str = typer.Argument(..., help="Container name, unique across hosts."),
        command: list[str] = typer.Argument(None, help="Command and arguments, after `--`."),
        image: str = typer.Option("host", "--image", help="`host` (the host's own root, read-only), "
                                  "a rootfs dir/tarball, an OCI layout, a `docker save` tarball, or a "
                                  "registry image REGISTRY/NAME:TAG (pulled here with skopeo)."),
        publish: list[str] = typer.Option([], "--publish", "-p", help="PORT\\[:CONTAINER_PORT]\\[/udp] on the host's public address."),
        env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE for the container."),
        memory: int = typer.Option(None, "--memory-mib", help="Memory limit (cgroup), MiB."),
        label: list[str] = typer.Option([], "--label", "-l", help="KEY=VALUE, for plans to select by.")) -> None:
    """Run a container on HOST: cloudmig run HOST NAME (options) -- CMD ARGS..."""
    rec = containers.run(host=host, name=name, image=image, command=list(command or []),
                         publish=publish, env=env, labels=label,
                         memory_limit_bytes=memory * 2**20 if memory is not None else None,
                         progress=lambda msg: err_console.print(msg, markup=False))
    console.print(f"{rec.name} running on {rec.host}, service IP {rec.service_ip}")


@app.command()
def ps(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Containers: name, host, service IP, published endpoints, state."""
    rows = containers.states()
    moving = {v.record.container: v for v in Journal.unfinished()}
    for r in rows:
        v = moving.get(r["name"])
        r["migration"] = None if v is None else {
            "status": v.status, "source": v.record.source, "destination": v.record.destination,
            "mode": v.record.mode, "phase": v.record.phase, "state": v.record.state}
    if json_out:
        print_json(rows)
        return
    table = Table("NAME", "HOST", "SERVICE IP", "ENDPOINTS", "STATE", "LABELS", box=None)
    for r in rows:
        state, m = r["state"], r["migration"]
        if m is not None:     # "in flight" or "interrupted" (then `migrate --resume` ends it)
            state += f"; migration {m['status']}: {m['source']} -> {m['destination']} at {m['phase']}"
        table.add_row(r["name"], r["host"], r["service_ip"], "\n".join(r["endpoints"]) or "-", state,
                      ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items())) or "-")
    console.print(table)


@app.command()
def logs(name: str = typer.Argument(..., help="Container name.")) -> None:
    """Print the container's output (stdout and stderr)."""
    typer.echo(containers.logs(name), nl=False)


@app.command()
def rm(name: str = typer.Argument(..., help="Container name.")) -> None:
    """Stop and remove a container (and any forwards of its old endpoints)."""
    containers.remove(name)
    console.print(f"{name} removed")
