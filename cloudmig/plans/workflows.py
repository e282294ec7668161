"""A plan as DBOS workflows: checkpointed steps, queues for the limits, recovery on launch.

    workflows.launch("vendor-exit", limits)          # DBOS up; this plan's queues, its recovery
    handle = workflows.start("vendor-exit", 1, resolved)

The plan's workflow walks its waves in order and, inside a wave, its dependency levels; each
container's move is a child workflow enqueued on three queues in turn, each holding its slot
while the next waits: ``<plan>.all`` (at most ``limits.total`` at once), ``<plan>.from``
partitioned by source host (``per_source``) and ``<plan>.to`` partitioned by destination
(``per_destination``). The innermost runs the migration as one step, and the health check as
another. DBOS records each step's result: a controller killed and relaunched (`plan resume`)
skips finished steps and re-runs the one it was in, which looks at the inventory first, so a
container already on its destination is not moved again.

Every process gets the executor id ``plan-<name>`` (``plan-<name>-<id>`` with
``$CLOUDMIG_CONTROLLER_ID``, for several controllers sharing a plan on PostgreSQL): launching
recovers that executor's pending workflows and no other plan's. A process resuming a plan
whose controller died launches as that controller's executor, so it recovers its workflows
whatever id or machine it had.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from dbos import DBOS, SetEnqueueOptions, SetWorkflowID

from cloudmig import errors, paths
from cloudmig.agent.api import Mode
from cloudmig.control.session import Session
from cloudmig.inventory import Inventory
from cloudmig.migration import events, recovery
from cloudmig.migration.engine import Migration
from cloudmig.migration.journal import Journal
from cloudmig.plans import faults, health, records, report
from cloudmig.plans.model import Cutover, Health
from cloudmig.plans.resolve import Resolved, Step

log = logging.getLogger(__name__)

APP_VERSION = "cloudmig-plans-1"     # fixed: recovery needs the same version across processes
QUEUE_POLL_S = 0.1               # a plan waits this long at most at each of its three queues
RESULT_POLL_S = 0.1              # a parent waiting for its child (DBOS polls: 1 s by default)
UNLIMITED = 10_000                   # a partitioned queue needs some partition limit
DRAIN_POLL_S = 0.5                   # how often a drain asks the old host for connections
HOOK_TIMEOUT_S = 120.0               # a cut-over hook (a DNS update) ends within this

OK = ("done", "already")


def workflow_id(name: str, attempt: int) -> str:
    return f"plan:{name}:{attempt}"


def queue_names(name: str) -> tuple[str, str, str]:
    return f"{name}.all", f"{name}.from", f"{name}.to"


def executor_id(name: str) -> str:
    controller = os.environ.get("CLOUDMIG_CONTROLLER_ID")
    return f"plan-{name}-{controller}" if controller else f"plan-{name}"


def launch(name: str, limits: dict[str, int | None], executor: str | None = None) -> None:
    """DBOS in this process for plan ``name``: its database, its queues, and the recovery of
    the pending workflows of ``executor`` (default: this process's ``executor_id``)."""
    config: Any = {"name": "cloudmig", "system_database_url": records.db_url(),
                   "application_version": APP_VERSION, "executor_id": executor or executor_id(name),
                   "log_level": "ERROR", "run_migrations": True,
                   # DBOS's background threads wake this often (default 1 s): sooner
                   # notifications, and a shutdown that does not wait a second for them
                   "notification_listener_polling_interval_sec": QUEUE_POLL_S}
    paths.ensure_private_dir(paths.state_dir() / "plans")
    DBOS(config=config)
    DBOS.listen_queues(list(queue_names(name)))
    DBOS.launch()
    q_all, q_from, q_to = queue_names(name)
    DBOS.register_queue(q_all, global_concurrency=limits.get("total"), polling_interval_sec=QUEUE_POLL_S,
                        on_conflict="always_update")
    DBOS.register_queue(q_from, partition_concurrency=limits.get("per_source") or UNLIMITED,
                        polling_interval_sec=QUEUE_POLL_S, on_conflict="always_update")
    # the innermost queue's entries run the migrations: per_controller bounds them per process
    DBOS.register_queue(q_to, partition_concurrency=limits.get("per_destination") or UNLIMITED,
                        worker_concurrency=limits.get("per_controller"),
                        polling_interval_sec=QUEUE_POLL_S, on_conflict="always_update")


def shutdown() -> None:
    DBOS.destroy(destroy_registry=False)


def start(name: str, attempt: int, resolved: dict):
    with SetWorkflowID(workflow_id(name, attempt)):
        return DBOS.start_workflow(plan_workflow, name, resolved)


def retrieve(name: str, attempt: int):
    return DBOS.retrieve_workflow(workflow_id(name, attempt))


# ---------------------------------------------------------------------- the plan
@DBOS.workflow(name="cloudmig.plan")
def plan_workflow(name: str, resolved_raw: dict) -> str:
    resolved = Resolved.model_validate(resolved_raw)
    outcome: dict[str, str] = {}
    failures = False
    for host in resolved.create:
        problem = _create_host(name, host.model_dump())
        if problem:
            return _finish(name, "failed", problem)
    for wave in resolved.waves:
        wave_failed = False
        for level in wave.levels():
            if _aborted(name):
                return _finish(name, "aborted")
            _tunnels(name, [s.model_dump() for s in level])
            handles = []
            for step in level:
                blocked = [d for d in step.after if d in outcome and outcome[d] not in OK]
                if blocked:
                    outcome[step.container] = _mark(name, step.container, "skipped",
                                                    f"after {blocked[0]}, which {outcome[blocked[0]]}")
                    continue
                _mark(name, step.container, "queued", None)
                handles.append((step, DBOS.retrieve_queue(queue_names(name)[0])
                                .enqueue(slot_source, name, step.model_dump(), "move")))
            for step, handle in handles:
                outcome[step.container] = handle.get_result(polling_interval_sec=RESULT_POLL_S)
            if "aborted" in (outcome[s.container] for s in level):
                return _finish(name, "aborted")
            wave_failed = wave_failed or any(outcome[s.container] not in OK for s in level)
            if wave_failed and wave.on_failure != "continue":
                break
        if wave_failed:
            failures = True
            if wave.on_failure == "rollback-wave":
                _move_back(name, [s for s in wave.steps if outcome.get(s.container) in OK + ("unhealthy",)])
            if wave.on_failure != "continue":
                return _finish(name, "failed")
    if failures:
        return _finish(name, "partial")       # some failed, on_failure: continue
    if resolved.decommission:
        gone = [_decommission(name, host, resolved.drain_timeout_s) for host in resolved.sources()]
        return _finish(name, "done", "; ".join(gone))
    return _finish(name, "done")


def _move_back(name: str, steps: list[Step]) -> None:
    _tunnels(name, [dict(s.model_dump(), destination=s.source) for s in steps])
    queue = DBOS.retrieve_queue(queue_names(name)[0])
    handles = [queue.enqueue(slot_source, name, s.model_dump(), "back") for s in steps]
    for h in handles:
        h.get_result(polling_interval_sec=RESULT_POLL_S)


@DBOS.step(name="cloudmig.plan.tunnels")
def _tunnels(name: str, level: list[dict]) -> None:
    """Every tunnel the level's migrations use, brought up one by one before they start (the
    engine brings up a missing tunnel itself, but two migrations doing it for one host pair at
    once would race)."""
    data = Inventory().read()
    pairs = set()
    for raw in level:
        c = data.containers.get(raw["container"])
        if c is None or c.host == raw["destination"]:
            continue
        pairs.add(tuple(sorted((c.host, raw["destination"]))))
        pairs |= {tuple(sorted((f.host, raw["destination"]))) for f in c.forwards if f.host != raw["destination"]}
    with Session(Inventory()) as session:
        for a, b in sorted(pairs):
            try:
                session.tunnel(a, b)
            except errors.CloudmigError as exc:      # the migration will fail and say why
                log.warning("tunnel %s-%s: %s", a, b, exc)


@DBOS.step(name="cloudmig.plan.aborted")
def _aborted(name: str) -> bool:
    return records.abort_requested(name)


@DBOS.step(name="cloudmig.plan.mark")
def _mark(name: str, container: str, state: str, detail: str | None) -> str:
    records.set_step(name, container, state=state, detail=detail)
    return state


@DBOS.step(name="cloudmig.plan.create_host")
def _create_host(name: str, raw: dict) -> str | None:
    """A host the plan needs, created by its provider unless it is ready already; a cloud
    host boots and joins by itself, as with `cloudmig host create`. A plan resumed after a
    crash in here finds a half-made one: a cloud VM that runs is joined, anything else is
    destroyed and made again. Returns why it failed, or None."""
    from cloudmig.control import hosts
    from cloudmig.plans.resolve import NewHost
    spec = NewHost(**raw).spec()
    have = Inventory().read().hosts.get(spec.name)
    if have is not None and have.state == "ready":
        return None
    records.update(name, outcome=f"creating host {spec.name} ({spec.provider})")
    try:
        if (have is not None and have.transport == hosts.JOINING_TRANSPORT
                and have.provider in ("aws", "azure") and have.state in ("running", "error")):
            hosts.join(have)
            return None
        if have is not None:
            hosts.destroy(have)
        hosts.create(spec)
    except errors.CloudmigError as exc:
        return f"creating host {spec.name} failed: {exc}" + (f" ({exc.hint})" if exc.hint else "")
    return None


@DBOS.step(name="cloudmig.plan.decommission")
def _decommission(name: str, host: str, drain_timeout_s: float) -> str:
    """Destroy ``host`` if the plan emptied it: once no connection comes in through the
    endpoints it forwards (or after ``drain_timeout_s``), its forwards end and it goes."""
    from cloudmig.control import hosts
    data = Inventory().read()
    if host not in data.hosts:
        return f"{host}: gone already"
    if any(c.host == host for c in data.containers.values()):
        return f"{host}: kept (containers run there)"
    forwarded = [c for c in data.containers.values() if any(f.host == host for f in c.forwards)]
    records.update(name, outcome=f"draining {host}")
    deadline = time.monotonic() + drain_timeout_s
    with Session(Inventory()) as session:
        agent = session.agent(host)
        while forwarded and time.monotonic() < deadline:
            if not any(agent.net.connections(c.service_ip, established_only=True) for c in forwarded):
                break
            time.sleep(DRAIN_POLL_S)
    left = time.monotonic() >= deadline and bool(forwarded)
    with Inventory().transaction() as d:
        for c in d.containers.values():
            c.forwards = [f for f in c.forwards if f.host != host]
    hosts.destroy(Inventory().read().host(host))
    return f"{host}: destroyed" + (" (connections were left at the deadline)" if left else "")


@DBOS.step(name="cloudmig.plan.finish")
def _finish(name: str, state: str, outcome: str | None = None) -> str:
    records.update(name, state=state, ended_at=time.time(), outcome=outcome)
    report.write(name)
    return state


# ---------------------------------------------------------------------- one container
@DBOS.workflow(name="cloudmig.plan.slot_source")
def slot_source(name: str, step: dict, kind: str) -> str:
    """Holds a slot of ``<plan>.all``; waits for one of its source host's."""
    return _wait_slot(name, 1, step["source"] if kind == "move" else step["destination"],
                      slot_destination, step, kind)


@DBOS.workflow(name="cloudmig.plan.slot_destination")
def slot_destination(name: str, step: dict, kind: str) -> str:
    """Holds its source's slot; waits for one of its destination host's."""
    return _wait_slot(name, 2, step["destination"] if kind == "move" else step["source"],
                      move_workflow, step, kind)


def _wait_slot(name: str, queue: int, host: str, then, step: dict, kind: str) -> str:
    with SetEnqueueOptions(queue_partition_key=host):
        handle = DBOS.retrieve_queue(queue_names(name)[queue]).enqueue(then, name, step, kind)
    return handle.get_result(polling_interval_sec=RESULT_POLL_S)


@DBOS.workflow(name="cloudmig.plan.move")
def move_workflow(name: str, step: dict, kind: str) -> str:
    result = migrate_step(name, step, kind)
    if result not in OK or kind != "move":
        return result
    if step.get("health"):
        result = health_step(name, step)
    if result in OK and step.get("cutover"):
        result = cutover_step(name, step)
    return result


@DBOS.step(name="cloudmig.plan.migrate")
def migrate_step(name: str, raw: dict, kind: str) -> str:
    """Move one container, unless the inventory says it is already there (a step re-run after
    a crash), or the plan is being aborted."""
    step = Step.model_validate(raw)
    src, dst = (step.source, step.destination) if kind == "move" else (step.destination, step.source)
    if kind == "move" and records.abort_requested(name):
        return _set(name, step.container, "aborted", "the plan was aborted before it started")
    _recover(name, step.container)
    inv = Inventory()
    data = inv.read()
    c = data.containers.get(step.container)
    if c is None:
        return _set(name, step.container, "failed", "no longer in the inventory")
    if c.host == dst:
        return _set(name, step.container, "already" if kind == "move" else "back", f"found on {dst}")
    if c.host != src:
        return _set(name, step.container, "failed", f"runs on {c.host}, neither {src} nor {dst}")
    _set(name, step.container, "moving" if kind == "move" else "moving back", None)
    run_id = records.run_started(name, step.container, kind, src, dst)
    faults.fire("before-move", step.container, lambda: records.abort_requested(name))

    def on_event(event: events.Event) -> None:
        if isinstance(event, events.PhaseStarted):
            records.set_step(name, step.container, phase=event.name)

    try:
        with Session(inv) as session:
            mig = Migration(session, step.container, dst, mode=Mode(step.mode), on_event=on_event)
            try:
                rep = mig.run()
            except errors.CloudmigError as exc:
                records.run_ended(run_id, False, str(exc), mig.report.to_dict())
                return _set(name, step.container, "failed", str(exc))
    except errors.CloudmigError as exc:         # before the engine began (a host unreachable)
        records.run_ended(run_id, False, str(exc), {})
        return _set(name, step.container, "failed", str(exc))
    records.run_ended(run_id, True, None, rep.to_dict())
    faults.fire("after-move", step.container)
    return _set(name, step.container, "done" if kind == "move" else "back",
                f"freeze {rep.freeze_ms or 0:.0f} ms, total {rep.total_ms or 0:.0f} ms")


def _recover(name: str, container: str) -> None:
    """A migration of ``container`` that a dead controller left half done (this plan's, re-run
    after a crash, or anyone's) is finished or rolled back by the engine's recovery first; the
    plan's record of that run gets its end."""
    try:
        view = Journal.load(container)
    except errors.ConfigError:        # never migrated
        return
    if view.status != "interrupted":
        return
    _set(name, container, "recovering", f"{view.record.source} -> {view.record.destination} was "
         f"interrupted at {view.record.phase or view.record.state}")
    with Session(Inventory()) as session:
        outcome, rep = recovery.recover(session, container)
    run_id = records.dangling_run(name, container)
    if run_id is not None:
        records.run_ended(run_id, outcome == "completed",
                          None if outcome == "completed" else "the controller died; rolled back", rep.to_dict())


@DBOS.step(name="cloudmig.plan.health")
def health_step(name: str, raw: dict) -> str:
    step = Step.model_validate(raw)
    records.set_step(name, step.container, state="checking")
    problem = health.check(Health.model_validate(raw["health"]), Inventory().read(), step.container)
    if problem:
        return _set(name, step.container, "unhealthy", problem)
    return _set(name, step.container, "done", None, keep_detail=True)


@DBOS.step(name="cloudmig.plan.cutover")
def cutover_step(name: str, raw: dict) -> str:
    """The hook, then the old endpoint drained and no longer forwarded (each part skipped when
    a re-run finds it done: the forward gone)."""
    step = Step.model_validate(raw)
    cut = Cutover.model_validate(raw["cutover"])
    data = Inventory().read()
    c = data.container(step.container)
    old = next((f for f in c.forwards if f.host == step.source), None)
    if old is None:
        return _set(name, step.container, "done", None, keep_detail=True)
    if cut.hook:
        records.set_step(name, step.container, state="cutting over")
        new_ep = health.endpoint(data, step.container, None)
        old_address = data.host(step.source).public_address or ""
        env = {"CLOUDMIG_OLD_ADDRESS": f"{old_address}:{old.ports[0].host_port}" if old.ports else ""}
        problem = health.run_command(cut.hook, step.container, c.host, new_ep, HOOK_TIMEOUT_S, env)
        if problem:
            return _set(name, step.container, "unhealthy", f"cut-over hook: {problem}")
    records.set_step(name, step.container, state="draining")
    deadline = time.monotonic() + cut.drain_timeout_s
    with Session(Inventory()) as session:
        agent = session.agent(step.source)
        while time.monotonic() < deadline and agent.net.connections(c.service_ip, established_only=True):
            time.sleep(DRAIN_POLL_S)
        left = time.monotonic() >= deadline
        agent.client.call("net.unpublish", owner=step.container)
    with Inventory().transaction() as d:
        d.containers[step.container].forwards = [f for f in d.containers[step.container].forwards
                                                 if f.host != step.source]
    return _set(name, step.container, "done", f"cut over from {step.source}"
                + (" (connections were left at the deadline)" if left else ""))


def _set(name: str, container: str, state: str, detail: str | None, keep_detail: bool = False) -> str:
    values: dict[str, Any] = {"state": state, "phase": None}
    if not keep_detail:
        values["detail"] = detail
    records.set_step(name, container, **values)
    return state
