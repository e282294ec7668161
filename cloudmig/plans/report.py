"""A finished plan's report: ``<state dir>/plans/<name>/report.{json,md,png}``.

Per container: source, destination, final state, and from the migration engine's report (kept
in the plan's runs) its freeze, how long its service's packets were held (the hold's start to
the switch letting them go to the destination: what the controller measures of its clients'
wait, which only a client can measure whole) and its total time. The PNG is a timeline of
every migration, coloured by wave (matplotlib, from the `bench` extra; skipped without it).
"""

from __future__ import annotations

import json
from pathlib import Path

from cloudmig import paths
from cloudmig.plans import records


def directory(name: str) -> Path:
    return paths.ensure_private_dir(paths.state_dir() / "plans" / name)


def build(name: str) -> dict:
    plan = records.require(name)
    runs = records.plan_runs(name)
    containers = []
    for s in records.plan_steps(name):
        mine = [r for r in runs if r["container"] == s["container"]]
        moves = [r for r in mine if r["kind"] == "move" and r["ok"]]
        containers.append({
            "container": s["container"], "wave": s["wave"], "source": s["source"],
            "destination": s["destination"], "state": s["state"], "detail": s["detail"],
            "freeze_ms": moves[-1]["freeze_ms"] if moves else None,
            "total_ms": moves[-1]["total_ms"] if moves else None,
            "held_ms": moves[-1]["held_ms"] if moves else None,
            "migrations": [{k: r[k] for k in ("kind", "source", "destination", "started_at", "ended_at", "ok",
                                              "error", "freeze_ms", "total_ms", "held_ms")} for r in mine],
        })
    return {"plan": name, "state": plan["state"], "attempt": plan["attempt"], "outcome": plan["outcome"],
            "started_at": plan["started_at"], "ended_at": plan["ended_at"],
            "limits": json.loads(plan["resolved"])["limits"],
            "most_at_once": records.most_at_once(runs),
            "containers": containers}


def markdown(rep: dict) -> str:
    lines = [f"# Plan {rep['plan']}: {rep['state']}", "", *([rep["outcome"], ""] if rep["outcome"] else []),
             f"Most migrations at once: {rep['most_at_once']} (limits: "
             + ", ".join(f"{k} {v}" for k, v in rep["limits"].items() if v) + ")", "",
             "| wave | container | from | to | state | freeze | packets held | total |",
             "|---|---|---|---|---|---|---|---|"]

    def ms(v):
        return f"{v:.0f} ms" if v is not None else "-"
    for c in rep["containers"]:
        lines.append(f"| {c['wave'] + 1} | {c['container']} | {c['source']} | {c['destination']} | {c['state']} | "
                     f"{ms(c['freeze_ms'])} | {ms(c['held_ms'])} | {ms(c['total_ms'])} |")
    lines += ["", "Packets held: from the hold's start (just before the freeze) until the switch let the "
              "service's packets go to its new host, on the controller's clock; a client's wait is that plus "
              "its round trip and the first answer, and only a client measures it."]
    return "\n".join(lines) + "\n"


def timeline(rep: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    runs = [(c, m) for c in rep["containers"] for m in c["migrations"] if m["ended_at"]]
    if not runs:
        return False
    t0 = min(m["started_at"] for _, m in runs)
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(runs) + 1.2))
    colours = plt.get_cmap("tab10")
    for i, (c, m) in enumerate(runs):
        ax.barh(i, m["ended_at"] - m["started_at"], left=m["started_at"] - t0,
                color=colours(c["wave"] % 10), alpha=1.0 if m["ok"] else 0.4)
    ax.set_yticks(range(len(runs)), [f"{c['container']} ({m['kind']})" for c, m in runs])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first migration began (colour: wave)")
    ax.set_title(f"plan {rep['plan']}: {rep['state']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write(name: str) -> Path:
    rep = build(name)
    d = directory(name)
    (d / "report.json").write_text(json.dumps(rep, indent=2))
    (d / "report.md").write_text(markdown(rep))
    timeline(rep, d / "timeline.png")
    return d
