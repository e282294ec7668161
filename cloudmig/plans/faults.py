"""Fault points of the plan controller, for the crash tests (like CLOUDMIG_FAULTS for one
migration, docs/design.md):

    CLOUDMIG_PLAN_FAULTS="after-move:web2:kill" cloudmig plan apply plan.yaml

``after-move:CONTAINER:kill``: the controller SIGKILLs itself once CONTAINER's migration has
ended and before DBOS records the step as finished: the worst moment for a resumed plan, which
must find the container already moved and not move it again.

``before-move:CONTAINER:wait-abort``: once CONTAINER is marked moving and before the engine
runs, the step waits until the plan's abort is requested (at most ``WAIT_ABORT_S``), so that
an abort lands while that migration is in flight, however fast it is.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Callable

from cloudmig import errors

ENV = "CLOUDMIG_PLAN_FAULTS"
POINTS = ("before-move", "after-move")
ACTIONS = ("kill", "wait-abort")
WAIT_ABORT_S = 120.0


def parse(text: str) -> list[tuple[str, str, str]]:
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        parts = item.split(":")
        if len(parts) != 3 or parts[0] not in POINTS or parts[2] not in ACTIONS:
            raise errors.ConfigError(f"{ENV}: {item!r} is not POINT:CONTAINER:ACTION "
                                     f"(points: {', '.join(POINTS)}; actions: {', '.join(ACTIONS)}).")
        out.append((parts[0], parts[1], parts[2]))
    return out


def fire(point: str, container: str, aborted: Callable[[], bool] | None = None) -> None:
    for p, c, action in parse(os.environ.get(ENV, "")):
        if p != point or c != container:
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "wait-abort" and aborted is not None:
            deadline = time.monotonic() + WAIT_ABORT_S
            while not aborted() and time.monotonic() < deadline:
                time.sleep(0.1)
