"""Cold restart, the baseline that loses state: stop, copy the writable layer, start fresh.

    report = cold.restart(inv, "app", "h2", publish=["17000:7000"], on_event=print)

Through the hosts' agents, like a migration: the source's agent stops the container (its
bundle stays), its writable layer is copied through the tunnel to the destination (the bytes
are reported as ``fs_bytes``; the copy is dropped there once it arrived), then the source's
container is removed and a fresh one with the same command, image and published port starts
on the destination. The workload keeps its state in memory, so the fresh one starts with a
new seed: state lost. ``freeze_ms`` is stop to "runc says running"; the client's longest
wait adds the time the fresh process needs until it answers (and to reconnect, since its
connection is gone).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from cloudmig.control import containers
from cloudmig.control.session import Session
from cloudmig.inventory import Inventory
from cloudmig.migration import events
from cloudmig.migration.report import Report

log = logging.getLogger(__name__)


def restart(inv: Inventory, name: str, destination: str, *, publish: list[str],
            on_event: Callable[[events.Event], None] = events.ignore) -> Report:
    c = inv.read().container(name)
    report = Report(container=name, source=c.host, destination=destination, mode="cold")

    def changed(phase_name: str, state: str) -> None:
        on_event(events.PhaseStarted(phase_name) if state == "start"
                 else events.PhaseEnded(phase_name, report.phases[-1].ms))

    def phase(phase_name: str):
        return report.phase(phase_name, changed)

    with Session(inv) as session:
        src, dst = session.agent(c.host).client, session.agent(destination).client
        session.tunnel(c.host, destination)       # as a migration's prepare does, before the stop
        dst_addr = session.host(destination).overlay_address
        t0 = time.monotonic()
        with phase("stop"):
            src.call("container.stop", name=name)
        with phase("copy"):
            rx = dst.call("container.receive_copy", name=name, bind_address=dst_addr)
            src.call("container.send_upper", name=name, address=dst_addr, port=rx["port"], token=rx["token"])
            report.fs_bytes = dst.call("container.receive_copy_wait", name=name)
            containers.remove(name, inv=inv)
    with phase("start"):
        containers.run(host=destination, name=name, image=c.image, command=c.command,
                       publish=publish, env=[f"{k}={v}" for k, v in c.env.items()], inv=inv)
    report.freeze_ms = report.total_ms = (time.monotonic() - t0) * 1000
    report.freeze_breakdown_ms = {p.name: p.ms for p in report.phases}
    report.ok = True
    return report
