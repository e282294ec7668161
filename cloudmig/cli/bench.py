"""`cloudmig bench`: the benchmark sweep on a lab of its own (see docs/benchmarks.md)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import typer
from rich.markup import escape

from cloudmig import errors
from cloudmig.cli._app import app, console

log = logging.getLogger(__name__)

MAX_MIB = 2048                # 2 cores, 24 GiB: a 2 GiB container is already heavy here
BUSY_MIBPS = 32               # "busy": MiB/s the workload rewrites


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise errors.ConfigError(f"{what} {text!r} is not a comma-separated list of numbers.") from None
    if not values or any(not 1 <= v <= MAX_MIB for v in values):
        raise errors.ConfigError(f"{what} {text!r}: each size must be 1-{MAX_MIB} MiB.")
    return values


def _dirty(text: str) -> list[float]:
    out = []
    for v in filter(None, (w.strip() for w in text.split(","))):
        if v in ("idle", "busy"):
            out.append(0.0 if v == "idle" else float(BUSY_MIBPS))
            continue
        try:
            out.append(float(v))
        except ValueError:
            raise errors.ConfigError(f"--write-rate {v!r} is not idle, busy or a number of MiB/s.") from None
    return out or [0.0]


def _modes(text: str) -> list[str]:
    from cloudmig.bench.runner import MODES
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise errors.ConfigError(f"--modes {text!r}: each mode must be one of {', '.join(MODES)}.")
    return modes


def _wan(text: str) -> list[str | None]:
    from cloudmig.bench.lab import parse_wan
    wans: list[str | None] = []
    for v in filter(None, (w.strip() for w in text.split(","))):
        # refuses a malformed WAN before any lab exists
        wans.append(v if parse_wan(v) != (None, 0.0) else None)
    return wans or [None]


def _outages(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise errors.ConfigError(f"--outages {text!r} is not a comma-separated list of seconds.") from None
    if any(not 0 <= v <= 600 for v in values):
        raise errors.ConfigError(f"--outages {text!r}: each outage must be 0-600 s.")
    return values or [0.0]


def _transports(text: str) -> list[str]:
    from cloudmig.bench.runner import TRANSPORT_HOSTS
    found = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in found if t not in TRANSPORT_HOSTS]
    if bad or not found:
        raise errors.ConfigError(f"--transports {text!r}: each one of {', '.join(TRANSPORT_HOSTS)}.")
    return list(dict.fromkeys(found))


@app.command()
def bench(sizes: str = typer.Option("64,256,1024", "--sizes", help=f"Memory sizes, MiB (up to {MAX_MIB})."),
          write_rate: str = typer.Option("idle", "--write-rate",
                                         help=f"MiB/s the workload rewrites: idle (0), busy ({BUSY_MIBPS}) or numbers, comma-separated."),
          modes: str = typer.Option("postcopy,stopcopy,cold", "--modes", help="Modes to compare."),
          wan_rates: str = typer.Option("none", "--wan-rates",
                                        help="WANs, comma-separated, one lab each: none, a rate (500mbit), "
                                             "a round trip between the hosts (50ms) or both (100mbit+50ms)."),
          transports: str = typer.Option("lab", "--transports",
                                         help="How the controller reaches the hosts: lab (their unix sockets), "
                                              "ssh (adopted over SSH inside them), or both: lab,ssh."),
          outages: str = typer.Option("0", "--outages",
                                      help="Seconds the WAN between the hosts is cut as the lazy transfer "
                                           "begins, comma-separated (post-copy runs; 0: none, the baseline)."),
          reps: int = typer.Option(1, "--reps", min=1, help="Repetitions of each run."),
          out: Path = typer.Option(Path("bench-results"), "--out", help="Directory for results.json and PNGs."),
          lab_id: str = typer.Option("bn", "--lab-id", help="The bench lab's id (1-4 lowercase chars)."),
          state_dir: Path = typer.Option(None, "--state-dir",
                                         help="The bench lab's state directory (default: OUT/lab)."),
          port: int = typer.Option(17000, "--port", help="Port the workload is published on."),
          window: float = typer.Option(1.0, "--window", min=0.1, max=60,
                                       help="Seconds of each of the client's measuring windows: before "
                                            "the move, during a bulk transfer (post-copy), after it.")) -> None:
    """Measure freeze, client wait and total time per mode, memory size, write rate and WAN rate."""
    from cloudmig.bench import output, plots, runner, targets
    from cloudmig.providers.lab.topology import LAB_ID_RE
    if not LAB_ID_RE.match(lab_id):
        raise errors.ConfigError(f"--lab-id {lab_id!r} must be 1-4 lowercase letters/digits, starting with a letter.")

    out = out.resolve()
    cfg = runner.Config(sizes_mib=_ints(sizes, "--sizes"), dirty_mibps=_dirty(write_rate),
                        modes=_modes(modes), wan_rates=_wan(wan_rates), transports=_transports(transports),
                        outages_s=_outages(outages), repetitions=reps, out_dir=out,
                        lab_id=lab_id, state_dir=(state_dir or out / "lab").resolve(), host_port=port,
                        window_s=window)
    console.print(f"bench: sizes {cfg.sizes_mib} MiB, write rates {cfg.dirty_mibps} MiB/s, modes "
                  f"{cfg.modes}, WAN {[w or 'unshaped' for w in cfg.wan_rates]}, via {cfg.transports}, "
                  f"WAN cuts {[o for o in cfg.outages_s if o] or 'none'} s, "
                  f"{reps} rep(s) -> {out}")
    results = runner.sweep(cfg, progress=lambda line: console.print("  " + escape(line)))
    checks = targets.check([r for r in results if not r.outage_s])
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}
    path = output.write_json(results, checks, out / "results.json", machine=output.machine(), config=config)
    (out / "results.md").write_text(output.markdown(json.loads(path.read_text())))
    console.print(output.table(results), width=160, crop=False)
    for row in output.outage_rows([dataclasses.asdict(r) for r in results]):
        console.print(f"WAN cut {row['outage_s']:g} s ({row['mib']} MiB, WAN {row['wan']}): lazy phase "
                      f"{output._f(row['lazy_ms'])} ms against {output._f(row['base_lazy_ms'])} ms + the outage "
                      f"({output._f(row['ratio'], '{:.2f}')}x), next page "
                      f"{output._f(row['recovery_s'], '{:.1f}')} s after the link's return")
    for line in output.checks_lines(checks):
        console.print(line)
    for png in plots.write_all([r for r in results if not r.outage_s], out):
        console.print(f"plot: {png}")
    console.print(f"results: {path}")
    if not any(r.ok for r in results):
        raise errors.MigrationError("No benchmark run succeeded.", hint=f"See {path} and the runs' errors above.")
