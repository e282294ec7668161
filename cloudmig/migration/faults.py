"""Named fault points of the phase table, for failure tests and the fault matrix.

    faults = Faults.parse("before-restore:destination:break-images")
    CLOUDMIG_FAULTS="before-dump:destination:kill-agent" cloudmig migrate db --to h2

A point is ``before-PHASE`` or ``after-PHASE`` (phases: cloudmig.migration.engine.PHASES); a
side is ``source``, ``destination`` or ``controller``; an action is one of the agent's
(cloudmig.agent.faults.ACTIONS) or, on the controller, ``kill`` (SIGKILL to itself). Nothing
here runs a shell string.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from typing import Callable

from cloudmig import errors

ENV = "CLOUDMIG_FAULTS"
SIDES = ("source", "destination", "controller")


@dataclasses.dataclass(frozen=True)
class Fault:
    point: str          # before-PHASE | after-PHASE
    side: str
    action: str


@dataclasses.dataclass
class Faults:
    faults: list[Fault] = dataclasses.field(default_factory=list)

    @classmethod
    def parse(cls, spec: str, phases: list[str]) -> "Faults":
        found = []
        for item in filter(None, (part.strip() for part in spec.split(","))):
            point, _, rest = item.partition(":")
            side, _, action = rest.partition(":")
            when, _, phase = point.partition("-")
            if when not in ("before", "after") or phase not in phases or side not in SIDES or not action:
                raise errors.ConfigError(
                    f"{ENV}: {item!r} is not POINT:SIDE:ACTION (POINT before-/after- one of "
                    f"{', '.join(phases)}; SIDE one of {', '.join(SIDES)}).")
            found.append(Fault(point, side, action))
        return cls(found)

    @classmethod
    def from_env(cls, phases: list[str]) -> "Faults":
        return cls.parse(os.environ.get(ENV, ""), phases)

    def fire(self, point: str, on_side: Callable[[Fault], None]) -> None:
        for fault in self.faults:
            if fault.point != point:
                continue
            if fault.side == "controller":
                if fault.action != "kill":
                    raise errors.ConfigError(f"{ENV}: the controller's only fault is 'kill'.")
                os.kill(os.getpid(), signal.SIGKILL)
            on_side(fault)
