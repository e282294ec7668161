"""Finish or roll back a migration whose controller died: ``cloudmig migrate --resume NAME``.

    with Session(Inventory()) as session:
        outcome = recover(session, "db", on_event=print)    # "completed" | "rolled back"

The journal (cloudmig.migration.journal) says where the controller was; the agents say where
their sides are (``migration.status``), which is what decides: an agent may have gone further
than the controller lived to record. A side still running an op the dead controller sent (a
restore, a dump) is waited for first.

- The destination resumed the container (incoming ``resumed`` or later, or an earlier agent's
  container runs there): there is no way back, so the migration is rolled *forward*: the
  switch (each of its steps only where the side has not done it), the lazy pages, the cleanup.
- Otherwise it is rolled *back*: the destination's copy is discarded first (it never ran, so
  no client saw it), then the source thaws, unlocks and gets its held packets: the undo
  operations of the phase table, all idempotent and able to clean up after an agent that
  restarted since.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from cloudmig import errors
from cloudmig.agent.api import MigrationStatus, Mode
from cloudmig.control.session import Session
from cloudmig.migration import events
from cloudmig.migration.engine import Migration, State
from cloudmig.migration.journal import Journal
from cloudmig.migration.report import Report

log = logging.getLogger(__name__)

SETTLE_TIMEOUT_S = 300         # an op the dead controller sent (a restore, a full dump) ends within this
SETTLE_POLL_S = 0.2
LIVE_STATES = ("resumed", "switched", "drained", "done")


def recover(session: Session, name: str,
            on_event: Callable[[events.Event], None] = events.ignore) -> tuple[str, Report]:
    journal = Journal.take_over(name)
    rec = journal.record
    try:
        mig = Migration(session, name, rec.destination, Mode(rec.mode), on_event=on_event,
                        source=rec.source)
        mig.journal = journal
        mig.relearn(rec.learnt)
        mig.report.state = rec.state
        src, dst = _settled(mig)
        on_event(events.Warning(
            f"recovering the migration of {name} ({rec.source} -> {rec.destination}), interrupted at "
            f"{rec.phase or rec.state}: source {_side(src.outgoing)}, destination {_side(dst.incoming)}"))
        if _destination_runs_it(dst):
            _forward(mig, src, dst)
            outcome = State.DONE
        else:
            _back(mig)
            outcome = State.ROLLED_BACK
        mig.report.state = outcome.value
        mig.report.ok = outcome is State.DONE
        mig.report.rolled_back = outcome is State.ROLLED_BACK
        journal.end(outcome.value)
        return ("completed" if outcome is State.DONE else "rolled back"), mig.report
    except BaseException as exc:
        journal.update(error=f"recovery failed: {exc}")
        raise
    finally:
        journal.release()


def _side(status) -> str:
    if status is None:
        return "none"
    return status.state + ("" if status.known else " (an earlier agent's)")


def _settled(mig: Migration) -> tuple[MigrationStatus, MigrationStatus]:
    """Both sides' status once neither runs an op any more."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        src = mig.session.revive(mig.src_name).migration_status(mig.name)
        dst = mig.session.revive(mig.dst_name).migration_status(mig.name)
        busy = [f"{host}: {s.busy}" for host, s in ((mig.src_name, src.outgoing), (mig.dst_name, dst.incoming))
                if s is not None and s.busy]
        if not busy:
            return src, dst
        if time.monotonic() > deadline:
            raise errors.MigrationError(f"The migration of {mig.name} is still busy ({'; '.join(busy)}) "
                                        f"after {SETTLE_TIMEOUT_S} s.", hint="Try again later.")
        time.sleep(SETTLE_POLL_S)


def _destination_runs_it(dst: MigrationStatus) -> bool:
    if dst.incoming is not None and dst.incoming.known:
        return dst.incoming.state in LIVE_STATES
    # an earlier agent's restore: the container's own state there says whether it ran
    return dst.container in ("running", "paused") and (
        dst.incoming is None or dst.incoming.state in LIVE_STATES + ("armed",))


def _forward(mig: Migration, src: MigrationStatus, dst: MigrationStatus) -> None:
    c = mig.container
    inc = dst.incoming.state if dst.incoming else "resumed"
    out = src.outgoing.state if src.outgoing else "frozen"
    with mig.report.phase("switch", mig._phase_event):
        if inc == "resumed":
            mig.dst.incoming.go_live(mig.name, c.service_ip)
        if out == "frozen":
            mig.report.held_packets = mig.src.outgoing.switch_over(mig.name, c.service_ip, mig.src_if)
        mig._publish()
    if mig.mode.lazy and inc not in ("drained", "done"):
        with mig.report.phase("lazy", mig._phase_event):
            mig._lazy()
    with mig.report.phase("cleanup", mig._phase_event):
        if not mig.mode.lazy and inc != "done":
            mig.dst.incoming.finish(mig.name)
        if out != "done":
            end = mig.src.outgoing.wait_dump(mig.name, timeout_s=60 if mig.mode.lazy else None)
            mig.report.dumped_pages = int(end.stats.get("pages_written", 0))
            mig.src.outgoing.finish(mig.name, c.service_ip)


def _back(mig: Migration) -> None:
    """The destination discarded first (it never ran: no client saw it), then the source."""
    problems = []
    for undo in (Migration._abort_destination, Migration._resume_source, Migration._release_hold,
                 Migration._disarm_source):
        try:
            undo(mig)
        except errors.CloudmigError as exc:
            problems.append(f"{undo.__name__.strip('_')}: {exc}")
    if problems:
        raise errors.MigrationError(f"Rolling back the migration of {mig.name} failed: {'; '.join(problems)}.",
                                    hint=f"Fix the cause and run `cloudmig migrate --resume {mig.name}` again.")
