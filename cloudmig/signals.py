"""SIGTERM handlers that only the process which installed them runs.

    signals.on_sigterm(lambda: sys.exit(0))       # the agent: unwind and remove the socket
    with signals.sigterm_interrupts():             # the bench: `kill` cleans up like Ctrl-C
        ...

pyroute2 forks helper children (to open sockets in other network namespaces) and stops them
with SIGTERM. A forked child inherits Python's signal handlers; if the handler unwinds the
stack, the child runs the parent's ``except``/``finally`` blocks as if it were the parent:
it removes lab hosts, prints, closes channels. So in any process but the one that installed
the handler, SIGTERM ends the process at once (``os._exit``) and runs nothing of ours.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Callable, Iterator


def on_sigterm(action: Callable[[], None]):
    """Install ``action`` for SIGTERM in this process; forked children just exit. Returns the old handler."""
    owner = os.getpid()

    def _handler(signum, frame):
        if os.getpid() != owner:
            os._exit(128 + signum)
        action()

    return signal.signal(signal.SIGTERM, _handler)


def _interrupt() -> None:
    raise KeyboardInterrupt("SIGTERM")


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt (in this process only)."""
    old = on_sigterm(_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
