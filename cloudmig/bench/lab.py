"""The benchmark's own lab: its own id and state directory, removed at the end whatever happens.

    env = lab.process_env(state_dir, "bn")      # start the process that works on the lab with it
    ...                                         # and in that process:
    with lab.own_lab(state_dir, "bn", hosts=2, wan="100mbit+50ms") as addresses:
        addresses["h1"]        # public address, reachable from this (root) namespace

A WAN (``parse_wan``) is a rate the lab's links are shaped to (tc tbf), a round trip added
between the hosts (bench/delay.py), or both; none: the links as fast as this machine.

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
from cloudmig.bench.delay import MAX_ONE_WAY_MS, DelayLine

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


def parse_wan(text: str | None) -> tuple[int | None, float]:
    """A bench WAN -> (rate in bits/s or None, round trip in ms or 0): ``500mbit``,
    ``50ms``, ``100mbit+50ms``; None, ``none`` or ``unshaped``: neither."""
    from cloudmig.providers.lab.topology import parse_rate

    rate, rtt = None, 0.0
    for part in filter(None, (p.strip().lower() for p in (text or "").split("+"))):
        if part in ("none", "unshaped"):
            continue
        if part.endswith("ms") and part[:-2].replace(".", "", 1).isdigit():
            rtt = float(part[:-2])
            if not 0 < rtt <= 2 * MAX_ONE_WAY_MS:
                raise errors.ConfigError(f"WAN {text!r}: a round trip must be 0-{2 * MAX_ONE_WAY_MS} ms.")
        else:
            try:
                rate = parse_rate(part)
            except errors.ConfigError:
                raise errors.ConfigError(f"WAN {text!r}: {part!r} is neither a rate (500mbit) nor a round "
                                         "trip (50ms).", hint="e.g. --wan-rates none,500mbit,100mbit+50ms") from None
    return rate, rtt


@contextlib.contextmanager
def own_lab(state_dir: Path, lab_id: str, *, hosts: int = 2, wan: str | None = None,
            progress=lambda line: None) -> Iterator[dict[str, str]]:
    from cloudmig.control import hosts as control_hosts
    from cloudmig.providers.lab import LabProvider
    from cloudmig.providers.lab.topology import Topology

    rate_bps, rtt_ms = parse_wan(wan)
    _check_process(state_dir, lab_id)
    with signals.sigterm_interrupts(), contextlib.ExitStack() as delays:
        provider = LabProvider()
        try:
            records = provider.up(hosts=hosts, rate_bps=rate_bps, progress=progress)
            if rtt_ms:
                progress(f"a {rtt_ms:g} ms round trip between the hosts (a delay line in each)")
                for r in records:
                    delays.enter_context(DelayLine(Topology.current().host_netns(r.name), rtt_ms / 2))
            yield {r.name: r.public_address for r in records}
        finally:
            delays.close()
            log.info("removing the bench lab %s", lab_id)
            # a second Ctrl-C must not stop the clean-up half way
            old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                control_hosts.lab_down(progress=progress)
            finally:
                signal.signal(signal.SIGINT, old_int)


SSH_NAMES = {"h1": "s1", "h2": "s2"}     # lab host -> the host adopted over SSH inside it


@contextlib.contextmanager
def adopted_over_ssh(state_dir: Path, addresses: dict[str, str],
                     progress=lambda line: None) -> Iterator[dict[str, str]]:
    """The lab's hosts again, reached the way real machines are: an sshd in each lab host's
    namespace, adopted as s1, s2 (agents of their own, over one SSH session per host). Yields
    their public addresses; stops the agents and sshd, whatever happens."""
    import sys

    from cloudmig import providers
    from cloudmig.bench.sshd import Sshd
    from cloudmig.providers.lab.topology import lab_id

    started: list[Sshd] = []
    provider = providers.load("ssh")
    try:
        for lab_host, name in SSH_NAMES.items():
            work = state_dir / "ssh" / name
            sshd = Sshd(work / "sshd", netns=f"{lab_id()}-{lab_host}", address=addresses[lab_host])
            sshd.start()
            started.append(sshd)
            options = {"target": f"root@{addresses[lab_host]}", "port": str(sshd.port),
                       "identity": str(sshd.client_key), "remote_venv": sys.prefix,
                       "remote_dir": str(work / "remote"), "agent_start": "nohup",
                       "cgroup_parent": f"/cloudmig/{lab_id()}-{name}", "netns_prefix": f"{lab_id()}-c-{name}"}
            provider.create_host(providers.HostSpec(name=name, provider="ssh", options=options),
                                 lambda line: progress("  " + line))
        yield {name: addresses[lab_host] for lab_host, name in SSH_NAMES.items()}
    finally:
        from cloudmig.control import hosts as control_hosts
        from cloudmig.inventory import Inventory
        records = Inventory().read().hosts
        for name in SSH_NAMES.values():
            if name in records:
                control_hosts.destroy(records[name], lambda line: progress("  " + line))
        for sshd in started:
            sshd.stop()
