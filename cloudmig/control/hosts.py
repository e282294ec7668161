"""Removing hosts, across layers: their tunnels go first (on the peers too), then the provider
removes what it made.

    hosts.destroy(inv.read().host("s1"), progress=print)
    hosts.lab_down(progress=print)

Providers only know their own hosts; tunnels are the controller's (cloudmig.control.tunnels),
so this is where the two meet.
"""

from __future__ import annotations

from cloudmig import providers
from cloudmig.control import tunnels
from cloudmig.inventory import HostRecord, Inventory


def destroy(record: HostRecord, progress: providers.Progress = providers._no_progress,
            inv: Inventory | None = None) -> None:
    tunnels.down_all({record.name}, inv)
    providers.load(record.provider).destroy_host(record, progress)


def lab_down(progress: providers.Progress = providers._no_progress, inv: Inventory | None = None) -> None:
    from cloudmig.providers.lab import LabProvider
    lab = LabProvider()
    tunnels.down_all({h.name for h in lab.list_hosts()}, inv)
    lab.down(progress)
