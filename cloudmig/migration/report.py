"""What a migration reports: phases with timestamps, the freeze window, pages and bytes.

    report = Report(container="db", source="h1", destination="h2", mode="postcopy")
    with report.phase("prepare"):
        ...
    report.write(Path("report.json"))
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Iterator


@dataclasses.dataclass
class PhaseRecord:
    name: str
    start: float
    end: float | None = None

    @property
    def ms(self) -> float:
        return ((self.end or time.time()) - self.start) * 1000


@dataclasses.dataclass
class Report:
    container: str
    source: str
    destination: str
    mode: str
    ok: bool = False
    error: str | None = None
    rolled_back: bool = False
    lost: str | None = None             # after the resume: why its memory could not arrive
    state: str = "new"                  # how far it got (cloudmig.migration.engine.State)
    freeze_ms: float | None = None      # freeze (dump starts) to resume (restore returned)
    total_ms: float | None = None
    memory_bytes: int = 0               # resident memory of the container at preflight
    lazy_pages: int = 0                 # pages left behind at the freeze (post-copy)
    faulted_pages: int = 0              # of those, fetched because the container touched them
    pushed_pages: int = 0               # of those, pushed in the background
    dumped_pages: int = 0               # pages CRIU wrote into the images (stop-and-copy: all)
    fs_bytes: int = 0                   # writable layer: pre-sync + final sync
    images_bytes: int = 0               # CRIU images sent during the freeze
    hot_pages: dict[str, int] = dataclasses.field(default_factory=dict)  # sent ahead of the
    # freeze (post-copy): sent, sent_bytes, unchanged, changed, dropped, installed
    smaps: dict[str, int] = dataclasses.field(default_factory=dict)  # post-copy: processes whose
    # mappings' flags CRIU's dump took from a copy taken before the freeze ("used") or read ("read")
    layers_bytes: int = 0               # image layers the destination lacked (prepare)
    page_size: int = 4096               # the destination's, as its lazy-pages daemon counted
    control_round_trips_in_freeze: int = 0   # controller -> agent calls inside the freeze
    held_packets: int = 0               # packets that waited through the freeze (not dropped)
    freeze_breakdown_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    phases: list[PhaseRecord] = dataclasses.field(default_factory=list)
    started_at: float = dataclasses.field(default_factory=time.time)

    @contextlib.contextmanager
    def phase(self, name: str, on_change: Callable[[str, str], None] | None = None) -> Iterator[PhaseRecord]:
        rec = PhaseRecord(name=name, start=time.time())
        self.phases.append(rec)
        if on_change:
            on_change(name, "start")
        try:
            yield rec
        finally:
            rec.end = time.time()
            if on_change:
                on_change(name, "end")

    def held_ms(self) -> float | None:
        """How long the service's packets waited in the source's kernel at most: from the
        hold's start (just before the freeze) until the switch let them go to the destination
        (the source's switch-over call returned), on the controller's clock. None without
        a switch (a rollback lets them go to the source)."""
        hold = next((p for p in self.phases if p.name == "hold"), None)
        switch = next((p for p in self.phases if p.name == "switch"), None)
        if hold is None or switch is None or switch.end is None:
            return None
        over = self.freeze_breakdown_ms.get("switch.over")       # the source's one switch call
        released = switch.end if over is None else switch.start + over / 1000
        return round((released - hold.start) * 1000, 1)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["held_ms"] = self.held_ms()
        data["phases"] = [{"name": p.name, "start": p.start, "end": p.end,
                           "ms": round(p.ms, 1)} for p in self.phases]
        return data

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
