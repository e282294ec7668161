"""The sweep's results as a JSON file, a rich table and a markdown summary.

    output.write_json(results, checks, Path("bench-results/results.json"), machine=output.machine())
    console.print(output.table(results))
    Path("bench-results/results.md").write_text(output.markdown(json.loads(path.read_text())))

``markdown`` works from the JSON alone (``python -m cloudmig.bench.output results.json``), so a
saved sweep can be summarised again later.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
from pathlib import Path

from rich.markup import escape
from rich.table import Table

MIB = 2**20


def machine() -> dict:
    mem_kib = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    return {"hostname": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
            "cpu": cpu, "memory_gib": round(mem_kib / 2**20, 1),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def write_json(results, checks, path: Path, *, machine: dict, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"machine": machine, "config": config,
            "targets": [dataclasses.asdict(c) for c in checks],
            "runs": [dataclasses.asdict(r) for r in results]}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def _f(value, fmt="{:.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def table(results) -> Table:
    t = Table("WAN", "via", "MiB", "dirty\nMiB/s", "mode", "freeze\nms", "client\nwait ms", "wait -\nfreeze",
              "client\nresends", "total\nms", "moved\nMiB", "transfer\n/ tunnel", "faulted /\npushed", "req/s before /\nbulk / lazy / after",
              "state", box=None)
    for r in results:
        rep = r.report
        if r.outage_s:
            continue            # markdown's and the CLI's outage section
        if not r.ok:
            t.add_row(r.wan_rate or "-", r.transport, str(r.memory_mib), f"{r.dirty_mibps:g}", r.mode,
                      "[red]failed[/]", "", "", "", "", "", "", "", "", (r.error or "")[:60])
            continue
        pages = f"{rep.get('faulted_pages', 0)} / {rep.get('pushed_pages', 0)}" if r.mode == "postcopy" else "-"
        state = {"survived": "[green]survived[/]", "lost": "[yellow]lost[/]"}.get(r.state, f"[red]{r.state}[/]")
        t.add_row(r.wan_rate or "-", r.transport, str(r.memory_mib), f"{r.dirty_mibps:g}", r.mode, _f(r.freeze_ms),
                  _f(r.client_longest_wait_ms), _f(_wait_over_freeze(dataclasses.asdict(r))),
                  _f(r.client_retransmits), _f(r.total_ms),
                  _f(r.bytes_moved / MIB, "{:.1f}"), _f(r.transfer_of_tunnel, "{:.2f}"), pages,
                  f"{_f(r.rate_before_rps)} / {_f(r.rate_bulk_rps)} / {_f(r.rate_lazy_rps)} / {_f(r.rate_after_rps)}", state)
    return t


def checks_lines(checks) -> list[str]:
    word = {True: "[green]PASS[/]", False: "[red]FAIL[/]", None: "[dim]SKIP[/]"}
    return [f"{word[c.ok]} {escape(c.name)}: {escape(c.detail)}" for c in checks]


def _wait_over_freeze(r: dict) -> float | None:
    """How much longer than the freeze the client's longest wait was."""
    if r.get("client_longest_wait_ms") is None or r.get("freeze_ms") is None:
        return None
    return r["client_longest_wait_ms"] - r["freeze_ms"]


def _median(rows: list[dict], get) -> float | None:
    values = [v for v in (get(r) for r in rows) if v is not None]
    return statistics.median(values) if values else None


def markdown(data: dict) -> str:
    """Medians over the repetitions of each (WAN, size, write rate, mode), the targets as the
    bench checked them, and where and when the numbers came from."""
    m, cfg = data["machine"], data.get("config", {})
    groups: dict[tuple, list[dict]] = {}
    for r in data["runs"]:
        if r.get("outage_s"):
            continue            # their own section, below
        groups.setdefault((r["wan_rate"] or "-", r.get("transport", "lab"), r["memory_mib"], r["dirty_mibps"],
                           r["mode"]), []).append(r)
    order = {mode: i for i, mode in enumerate(("postcopy", "stopcopy", "cold"))}
    lines = [f"Measured {m['date']} on `{m['hostname']}`: {m['cpus']} CPUs ({m['cpu']}), "
             f"{m['memory_gib']} GiB, kernel {m['kernel']}; medians of {cfg.get('repetitions', 1)} "
             "repetition(s).", "",
             "| WAN | via | MiB | dirty MiB/s | mode | freeze ms | client wait ms | wait - freeze ms "
             "| client resends | total ms | moved MiB | transfer / tunnel | faulted / pushed | req/s before / bulk / lazy / after | state |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(groups, key=lambda k: (k[0] != "-", k[0], k[1], k[2], k[3], order.get(k[4], 9))):
        wan, via, mib, dirty, mode = key
        rows = [r for r in groups[key] if r["ok"]]
        if not rows:
            lines.append(f"| {wan} | {via} | {mib} | {dirty:g} | {mode} | failed | | | | | | | | | "
                         f"{(groups[key][0].get('error') or '')[:60]} |")
            continue
        rep = lambda name: _median(rows, lambda r: (r.get("report") or {}).get(name))   # noqa: E731
        pages = (f"{rep('faulted_pages'):.0f} / {rep('pushed_pages'):.0f}" if mode == "postcopy" else "-")
        states = sorted({r["state"] for r in rows})
        lines.append(
            f"| {wan} | {via} | {mib} | {dirty:g} | {mode} | {_f(_median(rows, lambda r: r['freeze_ms']))} "
            f"| {_f(_median(rows, lambda r: r['client_longest_wait_ms']))} "
            f"| {_f(_median(rows, _wait_over_freeze))} "
            f"| {_f(_median(rows, lambda r: r.get('client_retransmits')))} "
            f"| {_f(_median(rows, lambda r: r['total_ms']))} "
            f"| {_f(_median(rows, lambda r: r['bytes_moved'] / MIB), '{:.1f}')} "
            f"| {_f(_median(rows, lambda r: r.get('transfer_of_tunnel')), '{:.2f}')} | {pages} "
            f"| {_f(_median(rows, lambda r: r['rate_before_rps']))} / "
            f"{_f(_median(rows, lambda r: r.get('rate_bulk_rps')))} / "
            f"{_f(_median(rows, lambda r: r['rate_lazy_rps']))} / "
            f"{_f(_median(rows, lambda r: r.get('rate_after_rps')))} "
            f"| {'/'.join(states)} ({len(rows)}/{len(groups[key])}) |")
    tunnels = {r["wan_rate"] or "-": r["tunnel_mibps"] for r in data["runs"] if r.get("tunnel_mibps")}
    if tunnels:
        lines += ["", "The tunnel's own throughput, measured in the same lab before the runs (bulk TCP "
                  "from agent to agent through it): " + ", ".join(
                      f"WAN {w}: {v:.0f} MiB/s" for w, v in sorted(tunnels.items())) + ". 'transfer / "
                  "tunnel': post-copy's lazy phase, stop-and-copy's sync of its images, each as a "
                  "fraction of that."]
    lines += ["", "Post-copy freeze profile (medians, ms; `dump.*` and `restore.*` are steps inside "
              "`dump` and `restore`, measured by the agents; `fs_sync` and `images` end the dump, "
              "`restore.pins` is the wait for pins set beside runc and CRIU):", ""]
    lines += _profile(groups)
    lines += _outages(data["runs"])
    lines += ["", "Targets, as the bench checked them:", ""]
    word = {True: "PASS", False: "FAIL", None: "SKIP"}
    lines += [f"- {word[t['ok']]} {t['name']}: {t['detail']}" for t in data.get("targets", [])]
    return "\n".join(lines) + "\n"


def outage_rows(runs: list[dict]) -> list[dict]:
    """Each post-copy run with a WAN outage against the same run without one (same WAN rate,
    size and write rate, medians): the lazy phase against the baseline's plus the outage, and
    how soon after the link's return pages came again."""
    rows = []
    keys = sorted({(r["wan_rate"] or "-", r["memory_mib"], r["dirty_mibps"], r["outage_s"])
                   for r in runs if r.get("outage_s") and r["ok"]}, key=str)
    for wan, mib, dirty, outage in keys:
        same = [r for r in runs if r["ok"] and r["mode"] == "postcopy" and (r["wan_rate"] or "-") == wan
                and r["memory_mib"] == mib and r["dirty_mibps"] == dirty]
        cut = [r for r in same if r.get("outage_s") == outage]
        base = _median([r for r in same if not r.get("outage_s")], lambda r: r.get("lazy_ms"))
        lazy = _median(cut, lambda r: r.get("lazy_ms"))
        rows.append({"wan": wan, "mib": mib, "dirty": dirty, "outage_s": outage, "base_lazy_ms": base,
                     "lazy_ms": lazy,
                     "ratio": lazy / (base + outage * 1000) if lazy and base is not None else None,
                     "recovery_s": _median(cut, lambda r: r.get("recovery_s")),
                     "wait_ms": _median(cut, lambda r: r["client_longest_wait_ms"]),
                     "states": "/".join(sorted({r["state"] for r in cut}))})
    return rows


def _outages(runs: list[dict]) -> list[str]:
    rows = outage_rows(runs)
    if not rows:
        return []
    lines = ["", "WAN outages during the lazy transfer (post-copy; the destination drops everything "
             "from and to the source for the outage, from the lazy phase's start). Ratio: the lazy "
             "phase against the same run's without an outage plus the outage; 'next page': from "
             "the link's return to the next page that arrived (0.2 s resolution):", "",
             "| WAN | MiB | dirty MiB/s | outage s | lazy ms without / with | ratio | next page s "
             "| client wait ms | state |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['wan']} | {r['mib']} | {r['dirty']:g} | {r['outage_s']:g} "
                     f"| {_f(r['base_lazy_ms'])} / {_f(r['lazy_ms'])} | {_f(r['ratio'], '{:.2f}')}x "
                     f"| {_f(r['recovery_s'], '{:.1f}')} | {_f(r['wait_ms'])} | {r['states']} |")
    return lines


PROFILE_KEYS = ("calls",          # the controller's round trips inside the freeze
                "dump", "dump.lock", "dump.criu", "dump.hot", "fs_sync", "images",
                "restore", "restore.receive", "restore.hot", "restore.mount", "restore.runc_restore",
                "restore.pins", "restore.flags", "restore.live")


def _profile(groups: dict[tuple, list[dict]]) -> list[str]:
    lines = ["| WAN | via | MiB | dirty | " + " | ".join(PROFILE_KEYS) + " | freeze |",
             "|---|---|---|---|" + "---|" * (len(PROFILE_KEYS) + 1)]
    for (wan, via, mib, dirty, mode), runs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "-", kv[0])):
        rows = [r for r in runs if r["ok"] and mode == "postcopy"]
        if not rows:
            continue
        cells = [_f(_median(rows, lambda r, k=k: _profile_value(r["report"], k))) for k in PROFILE_KEYS]
        lines.append(f"| {wan} | {via} | {mib} | {dirty:g} | " + " | ".join(cells)
                     + f" | {_f(_median(rows, lambda r: r['freeze_ms']))} |")
    return lines


def _profile_value(report: dict, key: str) -> float | None:
    if key == "calls":
        return report.get("control_round_trips_in_freeze")
    return (report.get("freeze_breakdown_ms") or {}).get(key)


if __name__ == "__main__":
    print(markdown(json.loads(Path(sys.argv[1]).read_text())), end="")
