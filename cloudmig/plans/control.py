"""What the `cloudmig plan` commands do: validate, apply (or a dry run), resume, abort, status.

    resolved = control.validate(Path("plan.yaml"))          # or errors.PlanError naming the line
    control.apply(Path("plan.yaml"), on_progress=...)       # DBOS workflows until the plan ends
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from cloudmig import errors
from cloudmig.control import tunnels
from cloudmig.control.session import Session
from cloudmig.inventory import Inventory, tunnel_key
from cloudmig.plans import model, records, resolve

# the dry run's estimate of one migration: a fixed cost (preflight to cleanup on small
# containers, measured here: 1-2 s) and its memory over the tunnel's rate: measured where the
# pair has a tunnel, else assumed
FIXED_S = 2.0
DEFAULT_TUNNEL_MIBPS = 80.0       # docs/benchmarks.md: 1 GiB post-copy unshaped in ~13 s
PROBE_S = 1.0                     # the dry run's throughput probe, per host pair: at most this
PROBE_MAX_BYTES = 256 << 20       # long, and at most this much
TERMINAL = ("done", "partial", "failed", "aborted")
STATUS_POLL_S = 0.1                # the controller looks at its plan's workflow (and redraws) this often


def validate_text(plan: model.Plan, where: model.Located) -> resolve.Resolved:
    """Resolved against the inventory, with every host involved asked (reachable, its available
    memory, each container's resident memory)."""
    data = Inventory().read()
    with Session(Inventory()) as session:
        def agent(host: str):
            try:
                return session.agent(host)
            except errors.CloudmigError as exc:
                raise errors.PlanError(f"{where.path}: host {host} does not answer: {exc}") from None

        def memory(c) -> int:
            return int(agent(c.host).memory(c.name).rss)

        def available(host: str) -> int:
            if host not in data.hosts:          # created by the plan: only its cap is known
                return 1 << 62
            return int(agent(host).memory().mem_available)

        return resolve.resolve(plan, where, data, memory=memory, available=available)


def validate(path: Path) -> tuple[model.Plan, resolve.Resolved, str]:
    plan, where, text = model.load(path)
    return plan, validate_text(plan, where), text


def tunnel_rates(resolved: resolve.Resolved,
                 assumed_mibps: float = DEFAULT_TUNNEL_MIBPS) -> dict[tuple[str, str], dict]:
    """Per (source, destination) pair the plan moves memory over: ``{"mibps", "measured",
    "why"}``. Measured where the pair has a tunnel already (a probe of at most ``PROBE_S`` and
    ``PROBE_MAX_BYTES`` through it); ``assumed_mibps`` where it has none (a dry run brings no
    tunnel up) or the probe failed, with why."""
    pairs = sorted({(s.source, s.destination) for s in resolved.steps() if s.source != s.destination})
    data = Inventory().read()
    out: dict[tuple[str, str], dict] = {}
    with Session(Inventory()) as session:
        for src, dst in pairs:
            why = None
            if tunnel_key(src, dst) not in data.tunnels:
                why = "no tunnel yet"
            else:
                try:
                    out[(src, dst)] = {"mibps": tunnels.throughput(session, src, dst, PROBE_MAX_BYTES, PROBE_S),
                                       "measured": True, "why": None}
                    continue
                except (errors.CloudmigError, OSError) as exc:
                    why = f"the probe failed: {exc}"
            out[(src, dst)] = {"mibps": assumed_mibps, "measured": False, "why": why}
    return out


def estimate(resolved: resolve.Resolved, tunnel_mibps: float = DEFAULT_TUNNEL_MIBPS,
             rates: dict[tuple[str, str], dict] | None = None) -> list[dict]:
    """Per wave: its levels in order and an estimated time, from memory sizes and the rate
    (per host pair from ``rates``, else ``tunnel_mibps``)."""
    total_limit = resolved.limits.get("total") or math.inf
    rates = rates or {}
    out = []
    for wave in resolved.waves:
        seconds = 0.0
        levels = []
        for level in wave.levels():
            each = [FIXED_S + s.memory_bytes / 2**20
                    / rates.get((s.source, s.destination), {}).get("mibps", tunnel_mibps) for s in level]
            batches = math.ceil(len(level) / total_limit) if total_limit != math.inf else 1
            seconds += max(each) * batches
            levels.append([f"{s.container}: {s.source} -> {s.destination} ({s.mode}, "
                           f"{s.memory_bytes >> 20} MiB)" for s in level])
        out.append({"wave": wave.name, "on_failure": wave.on_failure, "levels": levels,
                    "estimate_s": round(seconds, 1)})
    return out


# ---------------------------------------------------------------------- apply / resume
def begin(plan: model.Plan, resolved: resolve.Resolved, text: str) -> None:
    """Record a new plan (refused if one of that name is unfinished)."""
    row = records.get(plan.name)
    if row is not None and row["state"] == "running":
        how = ("`cloudmig plan resume " + plan.name + "`") if records.interrupted(row) else \
            f"wait for it (pid {row['owner_pid']}) or `cloudmig plan abort {plan.name}`"
        raise errors.PlanError(f"Plan {plan.name} is already running.", hint=f"To go on: {how}.")
    if row is not None and row["state"] in ("failed", "aborted", "partial"):
        raise errors.PlanError(f"Plan {plan.name} ended {row['state']}.",
                               hint=f"`cloudmig plan resume {plan.name}` goes on with it; "
                                    "or rename the new plan.")
    if not records.lock(plan.name):
        raise errors.PlanError(f"Plan {plan.name} is being applied by another controller.",
                               hint=f"`cloudmig plan status {plan.name}` shows it.")
    records.create(plan.name, text, resolved.model_dump(), [
        {"container": s.container, "wave": s.wave, "source": s.source, "destination": s.destination}
        for s in resolved.steps()])


def run(name: str, on_progress: Callable[[], None] | None = None, new_attempt: bool = False) -> str:
    """Apply plan ``name`` in this process until it ends: recover its pending workflows and
    wait for them, or start its workflow (a new attempt if asked); returns its final state."""
    from cloudmig.plans import workflows
    row = records.require(name)
    resolved = resolve.Resolved.model_validate_json(row["resolved"])
    # a dead controller's workflows are recovered by an executor of the same id: this one
    # takes it over (that controller may have had another CLOUDMIG_CONTROLLER_ID, or machine)
    executor = row["owner_executor"] if records.interrupted(row) and row["owner_executor"] \
        else workflows.executor_id(name)
    records.claim(name, executor)
    workflows.launch(name, resolved.limits, executor)
    try:
        handle = None
        if not new_attempt:
            try:
                status = workflows.retrieve(name, row["attempt"]).get_status()
            except Exception:
                status = None
            if status is None:
                handle = workflows.start(name, row["attempt"], resolved.model_dump())
            else:
                handle = workflows.retrieve(name, row["attempt"])    # recovered by the launch
        else:
            # the last attempt's workflows, if the launch recovered them, wind down first
            # (they still see the abort flag): never two attempts at once
            try:
                old = workflows.retrieve(name, row["attempt"])
                while old.get_status().status in ("PENDING", "ENQUEUED"):
                    time.sleep(0.3)
            except Exception:
                pass
            attempt = row["attempt"] + 1
            records.update(name, attempt=attempt, abort=False, state="running", ended_at=None)
            handle = workflows.start(name, attempt, resolved.model_dump())
        while True:
            status = handle.get_status().status
            if on_progress:
                on_progress()
            if status in ("SUCCESS", "ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"):
                break
            time.sleep(STATUS_POLL_S)
        if status != "SUCCESS":
            try:
                handle.get_result()
            except Exception as exc:     # a bug, not a failed migration (those are outcomes)
                records.update(name, state="failed", ended_at=time.time(), outcome=f"error: {exc!r}")
                raise errors.PlanError(f"Plan {name} stopped on an error: {exc!r}.",
                                       hint=f"`cloudmig plan resume {name}` tries again.") from exc
        return handle.get_result()
    finally:
        workflows.shutdown()


def apply(path: Path, on_progress: Callable[[], None] | None = None) -> str:
    plan, resolved, text = validate(path)
    begin(plan, resolved, text)
    return run(plan.name, on_progress)


def join(name: str, on_progress: Callable[[], None] | None = None) -> str:
    """Work on a plan another controller applies (they share a PostgreSQL database): take
    migrations from its queues until it ends. This process needs its own
    ``$CLOUDMIG_CONTROLLER_ID``."""
    from cloudmig.plans import workflows
    if not os.environ.get("CLOUDMIG_CONTROLLER_ID"):
        raise errors.PlanError("Joining a plan needs CLOUDMIG_CONTROLLER_ID set, unique per controller.")
    row = records.require(name)
    if row["state"] != "running":
        return row["state"]
    workflows.launch(name, resolve.Resolved.model_validate_json(row["resolved"]).limits)
    try:
        while True:
            row = records.require(name)
            if on_progress:
                on_progress()
            if row["state"] in TERMINAL:
                return row["state"]
            time.sleep(STATUS_POLL_S)
    finally:
        workflows.shutdown()


def resume(name: str, on_progress: Callable[[], None] | None = None) -> str:
    row = records.require(name)
    if row["state"] == "done":
        return "done"
    if row["state"] == "running" and not records.interrupted(row):
        raise errors.PlanError(f"Plan {name} is being applied (pid {row['owner_pid']} on {row['owner_host']}).",
                               hint=f"`cloudmig plan abort {name}` stops it.")
    if row["state"] == "running":            # interrupted: DBOS recovers it where it was
        state = run(name, on_progress)
        if state != "aborted" or not records.get(name)["abort"]:
            return state
    return run(name, on_progress, new_attempt=True)


def resume_all() -> list[tuple[str, int]]:
    """Every interrupted plan in the plans database (whichever command or machine started it),
    each in a process of its own (one DBOS executor per plan)."""
    out = []
    for row in records.all_plans():
        if records.interrupted(row):
            res = subprocess.run([sys.executable, "-m", "cloudmig", "plan", "resume", row["name"]],
                                 env=dict(os.environ))
            out.append((row["name"], res.returncode))
    return out


def abort(name: str) -> dict:
    row = records.require(name)
    if row["state"] != "running":
        raise errors.PlanError(f"Plan {name} is not running (it {row['state']}).")
    records.update(name, abort=True)
    if records.interrupted(row):
        records.update(name, state="aborted", ended_at=time.time())
    return records.require(name)


def status(name: str | None = None) -> list[dict]:
    rows = [records.require(name)] if name else records.all_plans()
    out = []
    for row in rows:
        state = "interrupted" if records.interrupted(row) else row["state"]
        out.append({"plan": row["name"], "state": state, "attempt": row["attempt"], "outcome": row["outcome"],
                    "abort_requested": bool(row["abort"]), "started_at": row["started_at"],
                    "controller": {"host": row["owner_host"], "pid": row["owner_pid"]},
                    "ended_at": row["ended_at"],
                    "containers": [{k: s[k] for k in ("container", "wave", "source", "destination", "state",
                                                      "phase", "detail")} for s in records.plan_steps(row["name"])],
                    "migrations": [{k: r[k] for k in ("container", "kind", "source", "destination", "started_at",
                                                      "ended_at", "ok", "error", "freeze_ms", "total_ms", "held_ms",
                                                      "pid")}
                                   for r in records.plan_runs(row["name"])]})
    return out
