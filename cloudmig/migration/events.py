"""What a migration tells whoever watches it (the CLI's progress, the bench, plans).

    def on_event(event: events.Event) -> None:
        match event:
            case events.PhaseEnded(name=name, ms=ms): print(name, ms)
"""

from __future__ import annotations

import dataclasses

from cloudmig.agent.api import LazyProgress


@dataclasses.dataclass(frozen=True)
class PhaseStarted:
    name: str


@dataclasses.dataclass(frozen=True)
class PhaseEnded:
    name: str
    ms: float


@dataclasses.dataclass(frozen=True)
class Resumed:
    """The container runs on the destination: the freeze is over."""
    freeze_ms: float
    round_trips: int             # controller calls inside the freeze window


@dataclasses.dataclass(frozen=True)
class LazyMoved:
    progress: LazyProgress
    elapsed_s: float


@dataclasses.dataclass(frozen=True)
class Switched:
    forwards: list[str]          # hosts that forward their published ports to the container


@dataclasses.dataclass(frozen=True)
class RollingBack:
    reason: str


@dataclasses.dataclass(frozen=True)
class Warning:
    message: str


Event = PhaseStarted | PhaseEnded | Resumed | LazyMoved | Switched | RollingBack | Warning


def ignore(event: Event) -> None:
    pass
