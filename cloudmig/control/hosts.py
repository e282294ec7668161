"""Removing hosts, across layers: their tunnels go first (on the peers too), then the provider
removes what it made.

    hosts.create(spec, progress=print)                  # a cloud host ends ready (or raises)
    hosts.destroy(inv.read().host("s1"), progress=print)
    hosts.lab_down(progress=print)

Providers only know their own hosts; tunnels are the controller's (cloudmig.control.tunnels),
so this is where the two meet.
"""

from __future__ import annotations

from cloudmig import errors, providers
from cloudmig.control import tunnels
from cloudmig.inventory import HostRecord, Inventory

JOINING_TRANSPORT = "ssh"       # hosts a provider leaves "running" and the controller adopts over SSH


def create(spec: providers.HostSpec, progress: providers.Progress = providers._no_progress, *,
           wait: bool = True, timeout_s: float | None = None, destroy_on_failure: bool = False,
           inv: Inventory | None = None) -> HostRecord:
    """Create a host with its provider; a cloud host then joins by itself (first boot, then
    adoption over SSH) unless ``wait`` is False. A failed join keeps the host (state ``error``)
    unless ``destroy_on_failure``."""
    inv = inv or Inventory()
    record = providers.load(spec.provider).create_host(spec, progress)
    if not wait or record.state != "running" or record.transport != JOINING_TRANSPORT:
        return record
    return join(record, progress, timeout_s=timeout_s, destroy_on_failure=destroy_on_failure, inv=inv)


def join(record: HostRecord, progress: providers.Progress = providers._no_progress, *,
         timeout_s: float | None = None, destroy_on_failure: bool = False,
         inv: Inventory | None = None) -> HostRecord:
    """Adopt a cloud host whose VM runs (made with --no-wait, or whose join failed): ready, or
    it raises and the host is kept (state ``error``) unless ``destroy_on_failure``."""
    from cloudmig.providers import cloud_join
    inv = inv or Inventory()
    if record.transport != JOINING_TRANSPORT or record.provider not in ("aws", "azure"):
        raise errors.ConfigError(f"Host {record.name} ({record.provider}) does not join by itself.",
                                 hint="Only aws and azure hosts join; `cloudmig host add` adopts a machine.")
    try:
        return cloud_join.join(inv, record, progress, timeout_s or cloud_join.DEFAULT_TIMEOUT_S)
    except (errors.CloudmigError, KeyboardInterrupt) as exc:
        if destroy_on_failure:
            progress(f"{record.name}: did not join; destroying it (--destroy-on-failure)")
            destroy(inv.read().hosts.get(record.name, record), progress, inv)
            if isinstance(exc, errors.CloudmigError):
                exc.hint = f"{record.name} was destroyed (--destroy-on-failure)."
        else:
            with inv.transaction() as data:
                if record.name in data.hosts:
                    data.hosts[record.name].state = "error"
        raise


def destroy(record: HostRecord, progress: providers.Progress = providers._no_progress,
            inv: Inventory | None = None) -> None:
    tunnels.down_all({record.name}, inv)
    providers.load(record.provider).destroy_host(record, progress)
    # a cloud host's containers went with its VM: forget them too
    with (inv or Inventory()).transaction() as data:
        for name in [c.name for c in data.containers.values() if c.host == record.name]:
            data.containers.pop(name)
            progress(f"{record.name}: container {name} forgotten (it went with the host)")


def lab_down(progress: providers.Progress = providers._no_progress, inv: Inventory | None = None) -> None:
    from cloudmig.providers.lab import LabProvider
    lab = LabProvider()
    tunnels.down_all({h.name for h in lab.list_hosts()}, inv)
    lab.down(progress)
