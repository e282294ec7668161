"""PNG figures of a sweep (matplotlib, the `bench` extra; headless Agg backend).

    plots.write_all(results, Path("bench-results"))   # -> [freeze-vs-memory.png, timeline-postcopy.png]

1. ``freeze-vs-memory.png``: cloudmig's freeze_ms and the client's longest wait against the
   container's memory size, one line per mode (medians over repetitions), log-scaled.
2. ``timeline-postcopy.png``: one post-copy migration (the largest size): pages fetched on a
   fault and pages pushed in the background over time, sampled from the engine's "lazy"
   events (one every 0.2 s, the engine's poll interval), with the freeze window marked.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

log = logging.getLogger(__name__)

COLOURS = {"postcopy": "tab:blue", "stopcopy": "tab:red", "cold": "tab:gray"}
DPI = 80


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def freeze_vs_memory(results, path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    groups: dict[tuple, dict[int, list]] = {}
    for r in results:
        if r.ok and r.freeze_ms is not None:
            key = (r.mode, r.dirty_mibps, r.wan_rate)
            groups.setdefault(key, {}).setdefault(r.memory_mib, []).append(r)
    for (mode, dirty, wan), by_size in sorted(groups.items(), key=lambda kv: str(kv[0])):
        sizes = sorted(by_size)
        label = mode + (f", dirty {dirty:g} MiB/s" if dirty else "") + (f", WAN {wan}" if wan else "")
        style = "-" if not dirty else "--"
        for ax, attr in zip(axes, ("freeze_ms", "client_longest_wait_ms")):
            ys = [statistics.median(getattr(r, attr) for r in by_size[s]) for s in sizes]
            ax.plot(sizes, ys, style, marker="o", color=COLOURS.get(mode), label=label)
    for ax, title in zip(axes, ("cloudmig freeze (ms)", "client's longest wait (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("container memory (MiB)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def timeline(result, path: Path) -> Path:
    plt = _pyplot()
    phases = {p["name"]: p for p in result.report.get("phases", [])}
    t0 = phases["dump"]["start"]     # the first phase of the freeze window
    lazy = [e for e in result.timeline if e["kind"] == "lazy"]
    ts = [e["t"] - t0 for e in lazy]
    faulted = [e.get("faulted_pages", 0) for e in lazy]
    pushed = [max(e.get("copied_pages", 0) - e.get("faulted_pages", 0), 0) for e in lazy]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(ts, pushed, marker=".", label="pushed in the background")
    ax.plot(ts, faulted, marker=".", label="fetched on a fault")
    ax.axvspan(0, phases["restore"]["end"] - t0, color="tab:red", alpha=0.2,
               label=f"freeze ({result.freeze_ms:.0f} ms)")
    for name in ("switch", "lazy", "cleanup"):
        if name in phases:
            ax.axvline(phases[name]["start"] - t0, color="gray", ls=":", lw=1)
            ax.text(phases[name]["start"] - t0, ax.get_ylim()[1] * 0.95, " " + name, fontsize=8, color="gray")
    ax.set_xlabel("seconds since the freeze began")
    ax.set_ylabel("pages (4 KiB), cumulative")
    ax.set_title(f"post-copy, {result.memory_mib} MiB, dirty {result.dirty_mibps:g} MiB/s, "
                 f"WAN {result.wan_rate or 'unshaped'}: {result.report.get('lazy_pages', 0)} lazy pages")
    ax.legend(fontsize=8, loc="center right")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def write_all(results, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if any(r.ok for r in results):
        written.append(freeze_vs_memory(results, out_dir / "freeze-vs-memory.png"))
    post = [r for r in results if r.ok and r.mode == "postcopy" and r.timeline]
    if post:
        # the busiest of the largest: the most interesting timeline
        pick = max(post, key=lambda r: (r.memory_mib, r.dirty_mibps, r.rep == 0))
        written.append(timeline(pick, out_dir / "timeline-postcopy.png"))
    return written
