"""The sweep's results as a JSON file and a rich table.

    output.write_json(results, checks, Path("bench-results/results.json"), machine=output.machine())
    console.print(output.table(results))
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
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
    t = Table("WAN", "MiB", "dirty\nMiB/s", "mode", "freeze\nms", "client\nwait ms", "total\nms",
              "moved\nMiB", "faulted /\npushed", "req/s before\n/ lazy", "state", box=None)
    for r in results:
        rep = r.report
        if not r.ok:
            t.add_row(r.wan_rate or "-", str(r.memory_mib), f"{r.dirty_mibps:g}", r.mode,
                      "[red]failed[/]", "", "", "", "", "", (r.error or "")[:60])
            continue
        pages = f"{rep.get('faulted_pages', 0)} / {rep.get('pushed_pages', 0)}" if r.mode == "postcopy" else "-"
        state = {"survived": "[green]survived[/]", "lost": "[yellow]lost[/]"}.get(r.state, f"[red]{r.state}[/]")
        t.add_row(r.wan_rate or "-", str(r.memory_mib), f"{r.dirty_mibps:g}", r.mode, _f(r.freeze_ms),
                  _f(r.client_longest_wait_ms), _f(r.total_ms), _f(r.bytes_moved / MIB, "{:.1f}"), pages,
                  f"{_f(r.rate_before_rps)} / {_f(r.rate_lazy_rps)}", state)
    return t


def checks_lines(checks) -> list[str]:
    word = {True: "[green]PASS[/]", False: "[red]FAIL[/]", None: "[dim]SKIP[/]"}
    return [f"{word[c.ok]} {escape(c.name)}: {escape(c.detail)}" for c in checks]
