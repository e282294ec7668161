"""What both sides of a migration share on an agent: where its files live, and its state.

    side = Outgoing(ctx, "db")           # cloudmig.agent.outgoing
    side.expect("checkpoint", State.ARMED)   # or errors.MigrationError naming both states

The controller walks the phase table (cloudmig.migration.engine); each side records how far it
got, so an operation that arrives out of order (a second controller, a replayed call, an agent
that restarted in between) is refused with the state it found instead of doing harm.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import time
from pathlib import Path

from cloudmig import errors
from cloudmig.agent.netops import NetOps
from cloudmig.runtime.runc import Runtime

log = logging.getLogger(__name__)


class State(enum.Enum):
    PREPARED = "prepared"          # destination made (or source pre-synced); nothing frozen
    ARMED = "armed"                # runc and CRIU wait at their gates
    FROZEN = "frozen"              # the source is frozen and dumped
    RESUMED = "resumed"            # the destination runs the container
    SWITCHED = "switched"          # clients reach the destination
    DRAINED = "drained"            # every lazy page arrived
    DONE = "done"
    ROLLED_BACK = "rolled_back"


FINAL = (State.DONE, State.ROLLED_BACK)


@dataclasses.dataclass
class HostContext:
    """This host's runtime and network, as every migration on it uses them."""
    runtime: Runtime
    net: NetOps

    def migration_dir(self, name: str) -> Path:
        return self.runtime.host_dir / "migrations" / name


class Side:
    role = "?"
    mode: object = None

    def __init__(self, ctx: HostContext, name: str) -> None:
        self.ctx, self.name = ctx, name
        self.state = State.PREPARED
        self.running: list[str] = []       # ops running now (a controller that took over waits)

    @property
    def runtime(self) -> Runtime:
        return self.ctx.runtime

    @property
    def net(self) -> NetOps:
        return self.ctx.net

    @property
    def dir(self) -> Path:
        return self.ctx.migration_dir(self.name)

    @property
    def images(self) -> Path:
        return self.dir / "images"

    def work(self, what: str) -> Path:
        return self.dir / f"work-{what}"

    def expect(self, op: str, *states: State) -> None:
        if self.state not in states:
            raise errors.MigrationError(
                f"The {self.role} migration of {self.name} on this host is {self.state.value}; "
                f"'{op}' needs it {' or '.join(s.value for s in states)}.",
                hint="Only one controller may move a container at a time; if a controller died, "
                     "let the migration be finished or rolled back first.")

    def advance(self, state: State) -> None:
        self.state = state
        self.write_journal()

    # ------------------------------------------------------------------ this side's journal
    @property
    def journal_path(self) -> Path:
        return self.ctx.migration_dir(self.name).parent / f"{self.name}.{self.role}.json"

    def write_journal(self) -> None:
        """This side's state, in a file next to (not in) the migration's directory, which
        its steps remove and remake: an agent that restarts reads it (``read_journals``)."""
        path = self.journal_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"role": self.role, "container": self.name, "state": self.state.value,
                                       "mode": getattr(self.mode, "value", None), "updated_at": time.time()}))
            os.replace(tmp, path)
        except OSError as exc:
            # a full disk must not stop the migration (or its undo) half way: the journal is
            # for an agent that restarts, and this one runs on
            log.warning("could not write the journal of %s's %s side: %s", self.name, self.role, exc)

    def status(self) -> dict:
        return {"state": self.state.value, "busy": ", ".join(self.running) or None, "known": True}


def read_journals(ctx: HostContext, role: str) -> dict[str, dict]:
    """The sides of migrations an earlier agent on this host left, by container name: what a
    restarted agent knows of them (``known`` False: their processes are no longer its own)."""
    found = {}
    for path in (ctx.runtime.host_dir / "migrations").glob(f"*.{role}.json"):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        found[rec["container"]] = {"state": rec["state"], "busy": None, "known": False, "mode": rec.get("mode")}
    return found
