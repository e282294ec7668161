"""The benchmark's own lab: its own id and state directory, removed at the end whatever happens.

    env = lab.process_env(state_dir, "bn")      # start the process that works on the lab with it
    ...                                         # and in that process:
    with lab.own_lab(state_dir, "bn", hosts=2, wan_rate="500mbit") as addresses:
        addresses["h1"]        # public address, reachable from this (root) namespace

cloudmig's own modules (inventory, providers, migration engine) find their lab through
``CLOUDMIG_STATE_DIR`` and ``CLOUDMIG_LAB_ID``. The bench never changes its own process's
environment: the process that works on the bench's lab is started with ``process_env``
(``runner.sweep`` does that), and ``own_lab`` refuses to run in a process set up for another
lab, whose hosts its clean-up would remove. SIGTERM is turned into KeyboardInterrupt for the
duration, so ``kill`` cleans up like Ctrl-C does (in this process only: see ``cloudmig.signals``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Iterator, Mapping

from cloudmig import errors, paths, signals

log = logging.getLogger(__name__)


def process_env(state_dir: Path, lab_id: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment (``base``, default this process's, plus the lab's two variables) of a
    process that works on the bench's lab, for ``subprocess.Popen(..., env=...)``."""
    env = dict(os.environ if base is None else base)
    env.update(CLOUDMIG_STATE_DIR=str(state_dir), CLOUDMIG_LAB_ID=lab_id)
    return env


def _check_process(state_dir: Path, lab_id: str) -> None:
    """Refuse to work on a lab other than the bench's: ``down`` removes every host of the lab."""
    from cloudmig.providers.lab.topology import lab_id as configured_lab_id
    here_dir, here_id = paths.state_dir(), configured_lab_id()
    if here_id != lab_id or here_dir.resolve() != Path(state_dir).resolve():
        raise errors.ConfigError(
            f"This process works on lab {here_id!r} in {here_dir}, not on the bench's lab "
            f"{lab_id!r} in {state_dir}.",
            hint="Start the process with env=bench.lab.process_env(state_dir, lab_id), as runner.sweep does.")


@contextlib.contextmanager
def own_lab(state_dir: Path, lab_id: str, *, hosts: int = 2, wan_rate: str | None = None,
            progress=lambda line: None) -> Iterator[dict[str, str]]:
    from cloudmig.providers.lab import LabProvider
    from cloudmig.providers.lab.topology import parse_rate

    rate_bps = parse_rate(wan_rate) if wan_rate else None
    _check_process(state_dir, lab_id)
    with signals.sigterm_interrupts():
        provider = LabProvider()
        try:
            records = provider.up(hosts=hosts, rate_bps=rate_bps, progress=progress)
            yield {r.name: r.public_address for r in records}
        finally:
            log.info("removing the bench lab %s", lab_id)
            # a second Ctrl-C must not stop the clean-up half way
            old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                LabProvider().down(progress=progress)
            finally:
                signal.signal(signal.SIGINT, old_int)
