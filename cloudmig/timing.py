"""Named wall-clock steps, for the freeze profile (the agent reports them, the engine keeps them).

    steps = Steps()
    with steps("lock"):
        ...
    steps.ms        # {"lock": 1.8}
    steps.total_ms  # since Steps() was made
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator


class Steps:
    def __init__(self) -> None:
        self._start = time.monotonic()
        self.ms: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.monotonic()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.monotonic() - t) * 1000

    @property
    def total_ms(self) -> float:
        return (time.monotonic() - self._start) * 1000
