"""Cold restart, the baseline that loses state: stop, copy the writable layer, start fresh.

    report = cold.restart(inv, "app", "h2", publish=["17000:7000"], on_event=print)

There is no agent operation that stops a container but keeps its bundle, so the bench does
the stop and the copy itself through the lab's files (lab hosts live on this machine): runc
kill on the source, the writable layer copied to the destination host's directory (the
bytes are reported as ``fs_bytes``), then the source's record is removed and a fresh
container with the same command, image and published port starts on the destination. The
workload keeps its state in memory, so the fresh one starts with a new seed: state lost.
``freeze_ms`` is stop to "runc says running"; the client's longest wait adds the time the
fresh process needs until it answers (and to reconnect, since its connection is gone).
"""

from __future__ import annotations

import logging
import shutil
import time
from typing import Callable

from cloudmig.control import containers
from cloudmig.inventory import Inventory
from cloudmig.migration import events
from cloudmig.migration.report import Report
from cloudmig.providers import lab as lab_hosts
from cloudmig.runtime import runc as rt

log = logging.getLogger(__name__)


def _tree_bytes(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def restart(inv: Inventory, name: str, destination: str, *, publish: list[str],
            on_event: Callable[[events.Event], None] = events.ignore) -> Report:
    c = inv.read().container(name)
    report = Report(container=name, source=c.host, destination=destination, mode="cold")

    def changed(phase_name: str, state: str) -> None:
        on_event(events.PhaseStarted(phase_name) if state == "start"
                 else events.PhaseEnded(phase_name, report.phases[-1].ms))

    def phase(phase_name: str):
        return report.phase(phase_name, changed)
    t0 = time.monotonic()
    with phase("stop"):
        rt.Runtime(lab_hosts.agent_dir(c.host), cgroup_parent="").stop(name)
    with phase("copy"):
        upper = rt.Runtime(lab_hosts.agent_dir(c.host), "").bundle(name).upper
        staged = lab_hosts.agent_dir(destination) / "cold" / name
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(upper, staged, symlinks=True)
        report.fs_bytes = _tree_bytes(staged)
        containers.remove(name, inv=inv)
    with phase("start"):
        containers.run(host=destination, name=name, image=c.image, command=c.command,
                       publish=publish, env=[f"{k}={v}" for k, v in c.env.items()], inv=inv)
    report.freeze_ms = report.total_ms = (time.monotonic() - t0) * 1000
    report.freeze_breakdown_ms = {p.name: p.ms for p in report.phases}
    shutil.rmtree(staged, ignore_errors=True)
    report.ok = True
    return report
