"""The benchmark's own lab: its own id and state directory, removed at the end whatever happens.

    with lab.own_lab(state_dir, "bn", hosts=2, wan_rate="500mbit") as addresses:
        addresses["h1"]        # public address, reachable from this (root) namespace

Inside the block ``CLOUDMIG_STATE_DIR`` and ``CLOUDMIG_LAB_ID`` point at the bench's lab, so
cloudmig's own modules (inventory, providers, migration engine) act on it; the previous
values come back afterwards. SIGTERM is turned into KeyboardInterrupt for the duration, so
``kill`` cleans up like Ctrl-C does (in this process only: see ``cloudmig.signals``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Iterator

from cloudmig import signals

log = logging.getLogger(__name__)

ENV_KEYS = ("CLOUDMIG_STATE_DIR", "CLOUDMIG_LAB_ID")


@contextlib.contextmanager
def _environment(state_dir: Path, lab_id: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ENV_KEYS}
    os.environ["CLOUDMIG_STATE_DIR"] = str(state_dir)
    os.environ["CLOUDMIG_LAB_ID"] = lab_id
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def own_lab(state_dir: Path, lab_id: str, *, hosts: int = 2, wan_rate: str | None = None,
            progress=lambda line: None) -> Iterator[dict[str, str]]:
    from cloudmig.providers.lab import LabProvider
    from cloudmig.providers.lab.topology import parse_rate

    rate_bps = parse_rate(wan_rate) if wan_rate else None
    with signals.sigterm_interrupts():
        with _environment(state_dir, lab_id):
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


def host_dir(host: str) -> Path:
    """Where a lab host keeps its files (the lab's hosts live on this machine)."""
    from cloudmig.providers.lab import host_dir as lab_host_dir
    return lab_host_dir(host)
