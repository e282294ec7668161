"""Agent calls that do not depend on each other, made at once.

    src_checks, dst_checks = parallel.at_once(src.doctor, dst.doctor)

A call to an agent is a round trip: a fraction of a millisecond in the lab, a WAN's round trip
(tens of milliseconds) to a host reached over SSH. The channels carry concurrent calls
(cloudmig.control.session), and each agent answers every request in a thread of its own, so
calls without a dependency between them cost one round trip together instead of one each.

Every call runs to its end, whatever the others do. Then the first call (in argument order)
that raised raises: the same error a sequential run would have raised first, so a refusal reads
the same, and nothing is left running behind the caller's back.
"""

from __future__ import annotations

import threading
import typing


def at_once(*calls: typing.Callable[[], typing.Any]) -> list[typing.Any]:
    """Run ``calls`` concurrently; their results in order, or the first one's error."""
    results: list[typing.Any] = [None] * len(calls)
    failures: list[BaseException | None] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as exc:       # re-raised in the caller's thread below
            failures[i] = exc

    threads = [threading.Thread(target=run, args=(i,), name=f"at-once-{i}", daemon=True)
               for i in range(1, len(calls))]
    for t in threads:
        t.start()
    if calls:
        run(0)                              # the first in this thread: one thread fewer
    for t in threads:
        t.join()
    for exc in failures:
        if exc is not None:
            raise exc
    return results
