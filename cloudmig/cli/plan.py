"""`cloudmig plan validate|apply|status|resume|abort|schema`, `cloudmig evacuate`, `cloudmig rebalance`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.live import Live
from rich.table import Table

from cloudmig.cli._app import app, console, print_json
from cloudmig.plans import control, model

plan_app = typer.Typer(help="Vendor-exit plans: many containers, in waves, durable (DBOS).", no_args_is_help=True)
app.add_typer(plan_app, name="plan")

STATE_STYLE = {"done": "green", "already": "green", "back": "yellow", "moving": "cyan", "moving back": "cyan",
               "checking": "cyan", "queued": "blue", "failed": "red", "unhealthy": "red", "skipped": "yellow",
               "aborted": "yellow"}


def _table(name: str) -> Table:
    [st] = control.status(name)
    table = Table("WAVE", "CONTAINER", "FROM", "TO", "STATE", "DETAIL",
                  title=f"plan {name}: {st['state']} (attempt {st['attempt']})", caption=st["outcome"], box=None)
    for c in st["containers"]:
        state = c["state"] + (f" ({c['phase']})" if c["phase"] else "")
        table.add_row(str(c["wave"] + 1), c["container"], c["source"], c["destination"],
                      f"[{STATE_STYLE.get(c['state'], 'white')}]{state}[/]", (c["detail"] or "")[:80])
    return table


def _live(name: str, work) -> str:
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        state = work(lambda: live.update(_table(name)))
        live.update(_table(name))
    from cloudmig.plans import report
    console.print()
    console.print(f"plan {name}: [bold]{state}[/]; report in {report.directory(name)}/report.md")
    if state != "done":
        raise typer.Exit(1)
    return state


def print_dry_run(resolved, tunnel_mibps: float) -> None:
    limits = ", ".join(f"{k} {v}" for k, v in resolved.limits.items() if v) or "none"
    console.print(f"plan {resolved.name}: {len(resolved.steps())} containers in {len(resolved.waves)} waves; "
                  f"at most at once: {limits}")
    for h in resolved.create:
        console.print(f"first, create host {h.name} ({h.provider})")
    rates = control.tunnel_rates(resolved, tunnel_mibps)
    for (src, dst), r in rates.items():
        how = (f"measured ({control.PROBE_S:g} s probe)" if r["measured"]
               else f"assumed (--tunnel-mibps; {r['why']})")
        console.print(f"tunnel {src} -> {dst}: {r['mibps']:.0f} MiB/s, {how}", markup=False, highlight=False)
    total = 0.0
    for i, w in enumerate(control.estimate(resolved, tunnel_mibps, rates), 1):
        total += w["estimate_s"]
        console.print(f"wave {i} {w['wave']} (on failure: {w['on_failure']}), about {w['estimate_s']:.0f} s:")
        for j, level in enumerate(w["levels"], 1):
            for line in level:
                console.print(f"  {j}. {line}")
    console.print(f"about {total:.0f} s in all")
    if resolved.decommission:
        console.print(f"then destroy {', '.join(resolved.sources())} once emptied and drained "
                      f"(at most {resolved.drain_timeout_s:g} s)")


@plan_app.command("schema")
def schema() -> None:
    """Print the plan file's JSON schema."""
    typer.echo(model.schema_json())


@plan_app.command("validate")
def validate(file: Path = typer.Argument(..., help="Plan file (YAML).")) -> None:
    """Check a plan (keys, references, dependencies, each host, capacity); change nothing."""
    _, resolved, _ = control.validate(file)
    console.print(f"plan {resolved.name} is valid: {len(resolved.steps())} containers in {len(resolved.waves)} waves")


@plan_app.command("apply")
def apply(file: Path = typer.Argument(..., help="Plan file (YAML)."),
          dry_run: bool = typer.Option(False, "--dry-run", help="Print the waves, order and estimates; change nothing."),
          tunnel_mibps: float = typer.Option(control.DEFAULT_TUNNEL_MIBPS, "--tunnel-mibps",
                                             help="Tunnel rate for the dry run's estimate where a host pair "
                                             "has no tunnel to measure yet, MiB/s."),
          join: bool = typer.Option(False, "--join", help="Help another controller apply this plan "
                                    "(shared PostgreSQL database, own CLOUDMIG_CONTROLLER_ID)."),
          decommission: bool = typer.Option(False, "--decommission",
                                            help="Once every container moved, destroy the source hosts the "
                                            "plan emptied (after their forwarded endpoints drained).")) -> None:
    """Apply a plan: waves in order, limits, health checks; durable (`plan resume` after a crash)."""
    if join:
        plan, _, _ = model.load(file)
        _live(plan.name, lambda tick: control.join(plan.name, tick))
        return
    plan, resolved, text = control.validate(file)
    resolved.decommission = decommission
    if dry_run:
        print_dry_run(resolved, tunnel_mibps)
        return
    control.begin(plan, resolved, text)
    _live(plan.name, lambda tick: control.run(plan.name, tick))


@plan_app.command("resume")
def resume(name: str = typer.Argument(None, help="Plan to go on with; default: every interrupted plan.")) -> None:
    """Go on with an interrupted, failed or aborted plan; nothing already moved moves again."""
    if name:
        _live(name, lambda tick: control.resume(name, tick))
        return
    done = control.resume_all()
    if not done:
        console.print("no interrupted plan")
    if any(code != 0 for _, code in done):
        raise typer.Exit(1)


@plan_app.command("abort")
def abort(name: str = typer.Argument(..., help="Plan to stop.")) -> None:
    """Stop a plan: the migrations in flight finish (or roll back), no new one starts."""
    control.abort(name)
    console.print(f"plan {name}: aborting; migrations in flight finish first")


@plan_app.command("status")
def status(name: str = typer.Argument(None, help="One plan (default: all)."),
           json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Plans and their containers' states."""
    rows = control.status(name)
    if json_out:
        print_json(rows)
        return
    if not rows:
        console.print("no plans")
    for row in rows:
        console.print(_table(row["plan"]))


def _confirm_and_apply(text: str, yes: bool, tunnel_mibps: float) -> None:
    plan, where = model.parse(text, "<generated plan>")
    resolved = control.validate_text(plan, where)
    console.print(text.rstrip(), markup=False, highlight=False)
    print_dry_run(resolved, tunnel_mibps)
    if not yes and not typer.confirm("Apply this plan?", default=False):
        console.print("nothing changed")
        raise typer.Exit(1)
    control.begin(plan, resolved, text)
    _live(plan.name, lambda tick: control.run(plan.name, tick))


@app.command()
def evacuate(host: str = typer.Argument(..., help="Host to empty (maintenance)."),
             to: str = typer.Option(None, "--to", help="H1,H2,...: destinations (default: every other "
                                    "ready host, the least loaded first)."),
             limit: int = typer.Option(2, "--limit", min=1, help="At most this many migrations at once."),
             yes: bool = typer.Option(False, "--yes", "-y", help="Apply without asking."),
             tunnel_mibps: float = typer.Option(control.DEFAULT_TUNNEL_MIBPS, "--tunnel-mibps",
                                                help="Tunnel rate for the estimate where a host pair has no "
                                                "tunnel to measure yet, MiB/s.")) -> None:
    """Move every container off HOST, as a plan (printed first; `plan resume` after a crash)."""
    from cloudmig.plans import generate
    text = generate.evacuate(host, [h for h in to.split(",") if h] if to else None, limit)
    if text is None:
        console.print(f"nothing runs on {host}")
        return
    _confirm_and_apply(text, yes, tunnel_mibps)


@app.command()
def rebalance(max_memory_pct: float = typer.Option(80.0, "--max-memory-pct", min=0.0, max=100.0,
                                                   help="Move containers off hosts whose containers use more "
                                                   "than this share of their memory."),
              limit: int = typer.Option(2, "--limit", min=1, help="At most this many migrations at once."),
              yes: bool = typer.Option(False, "--yes", "-y", help="Apply without asking."),
              tunnel_mibps: float = typer.Option(control.DEFAULT_TUNNEL_MIBPS, "--tunnel-mibps",
                                                 help="Tunnel rate for the estimate where a host pair has no "
                                                 "tunnel to measure yet, MiB/s.")) -> None:
    """Move containers off hosts above a memory threshold onto the least loaded ones, as a plan."""
    from cloudmig.plans import generate
    text, loads = generate.rebalance(max_memory_pct, limit)
    for h, load in loads.items():
        console.print(f"{h}: {len(load['containers'])} containers, {load['used'] >> 20} MiB, "
                      f"{generate.pct(load):.3f}% of {load['capacity'] >> 20} MiB")
    if text is None:
        console.print(f"nothing to move: no host is above {max_memory_pct:g}% with room for its "
                      "containers elsewhere")
        return
    _confirm_and_apply(text, yes, tunnel_mibps)
