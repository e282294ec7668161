"""Faults an agent can do to its own host on request, for the failure tests and the fault
matrix: named actions in Python, never a shell string from the environment.

    agent.fault("break-images", name="db")           # cloudmig.agent.api.Agent.fault

The controller fires them at named points of the phase table (cloudmig.migration.faults).
Every op already needs the agent's token, whose holder may run anything as root here; these
add no power, only a way to fail on cue.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import TYPE_CHECKING, Any

from cloudmig import errors
from cloudmig.network import _ns

if TYPE_CHECKING:
    from cloudmig.agent.migrations import Migrations

log = logging.getLogger(__name__)

FAULT_TABLE = "cmfault"
KILL_DELAY_S = 0.05        # the agent answers before it dies, so the caller knows it fired


def _kill_agent(ops: "Migrations", name: str) -> None:
    threading.Timer(KILL_DELAY_S, os.kill, args=(os.getpid(), signal.SIGKILL)).start()


def _break_images(ops: "Migrations", name: str) -> None:
    """CRIU's core images of the incoming migration vanish: its restore must fail. The
    source's sync returns once its bytes are sent, so they may still be arriving: wait."""
    inc = ops.incoming.get(name)
    rx = inc.receivers.get("images") if inc is not None else None
    if rx is not None:
        rx.wait()
    for img in (ops.ctx.migration_dir(name) / "images").glob("core-*.img"):
        img.unlink()


def _block_tcp_to(ops: "Migrations", name: str, address: str) -> None:
    """New TCP connections from this host to ``address`` are dropped (the tunnel itself works)."""
    rules = (f"add table ip {FAULT_TABLE}\n"
             f"add chain ip {FAULT_TABLE} out {{ type filter hook output priority 0; }}\n"
             f"add rule ip {FAULT_TABLE} out ip daddr {address} tcp flags & (syn|ack) == syn drop\n")
    _ns.nft(None, ["-f", "-"], f"blocking new TCP connections to {address}", script=rules)


def _break_criu_conf(ops: "Migrations", name: str) -> None:
    """CRIU refuses the container's options: the next dump fails after the freeze."""
    with open(ops.ctx.runtime.bundle(name).criu_conf, "a") as fh:
        fh.write("no-such-option\n")


def _kill_criu(ops: "Migrations", name: str) -> None:
    """CRIU (and the runc that runs it) of this host's side of the migration, SIGKILLed: the
    armed or dumping CRIU and page server on the source, the armed restore or the lazy-pages
    daemon on the destination. Nothing runs at some points: then nothing is killed."""
    from cloudmig.runtime import procs
    procs.kill_groups_mentioning(str(ops.ctx.migration_dir(name)))


def _kill_tunnel(ops: "Migrations", name: str, ifname: str) -> None:
    """The tunnel's wireguard-go process on this host, SIGKILLed (its interface goes with it)."""
    import time
    from pyroute2 import IPRoute
    from cloudmig.runtime import procs
    for pid in procs.pids_mentioning(ifname):
        with open(f"/proc/{pid}/comm") as fh:
            if fh.read().strip().startswith("wireguard"):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2             # dead, and its interface gone with it
    with IPRoute() as ipr:
        while ipr.link_lookup(ifname=ifname) and time.monotonic() < deadline:
            time.sleep(0.01)


WAN_TABLE = "cmwan"


def _wan_down(ops: "Migrations", name: str, address: str, seconds: float) -> None:
    """Every packet between this host and the peer's public ``address`` dropped for
    ``seconds`` (the WAN between the two hosts is down; the controller's channel, the clients
    and every other host still get through), then the link is back."""
    rules = (f"add table ip {WAN_TABLE}\n"
             f"add chain ip {WAN_TABLE} in {{ type filter hook input priority -10; }}\n"
             f"add chain ip {WAN_TABLE} out {{ type filter hook output priority -10; }}\n"
             f"add rule ip {WAN_TABLE} in ip saddr {address} drop\n"
             f"add rule ip {WAN_TABLE} out ip daddr {address} drop\n")
    _ns.nft(None, ["-f", "-"], f"cutting the WAN to {address}", script=rules)

    def back() -> None:
        try:
            _ns.nft(None, ["delete", "table", "ip", WAN_TABLE], "restoring the WAN")
        except errors.CloudmigError as exc:
            log.error("fault: could not restore the WAN: %s", exc)
        log.warning("fault: the WAN to %s is back after %s s", address, seconds)
    threading.Timer(float(seconds), back).start()


def _kill_host(ops: "Migrations", name: str) -> None:
    """As far as the container is concerned this host dies: every process of its copy of the
    container (its cgroup killed), its CRIU, then its agent."""
    from cloudmig.runtime import procs
    freezer = ops.ctx.runtime.freezer_file(name)
    if freezer is not None:              # SIGKILL its processes, then thaw: frozen ones die then
        for pid in (freezer.parent / "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        freezer.write_text("THAWED" if freezer.name == "freezer.state" else "0")
    procs.kill_groups_mentioning(str(ops.ctx.migration_dir(name)))
    _kill_agent(ops, name)


def _fill_disk(ops: "Migrations", name: str) -> None:
    """The file system of this host's migrations directory fills up (a file grows until ENOSPC).
    Only where that directory is a tmpfs of its own (the fault matrix mounts one): never on a
    host's real disk."""
    from cloudmig.runtime import mounts
    where = ops.ctx.runtime.host_dir / "migrations"
    if mounts.fstype(where) != "tmpfs":
        raise errors.ConfigError(f"fill-disk needs {where} to be a tmpfs of its own; it is not.")
    block = bytes(1 << 16)
    fd = os.open(where / ".fill", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while os.write(fd, block):
            pass
    except OSError:
        pass                             # full
    finally:
        os.close(fd)


def _stale_smaps_copy(ops: "Migrations", name: str) -> None:
    """The source's copies of smaps say that the private anonymous mappings had huge pages
    advised ("hg"), as if the container had asked for them after the copies were taken: CRIU's
    dump takes the stale flags (the mappings are the same), and the check must refuse it."""
    from cloudmig.runtime import dump
    out = ops.outgoing.get(name)
    if out is None:
        return
    for copy in dump.smaps_dir(out.work("src")).glob("*"):
        lines, anonymous = [], False
        for line in copy.read_text().splitlines(keepends=True):
            if line.startswith("VmFlags: "):
                line = line.rstrip("\n") + (" hg\n" if anonymous and " hg" not in line else "\n")
            else:
                fields = line.split()
                anonymous = len(fields) == 5 and fields[1] == "rw-p"
            lines.append(line)
        copy.write_text("".join(lines))


ACTIONS = {
    "fill-disk": _fill_disk,
    "stale-smaps-copy": _stale_smaps_copy,
    "kill-host": _kill_host,
    "kill-criu": _kill_criu,
    "kill-tunnel": _kill_tunnel,
    "wan-down": _wan_down,
    "kill-agent": _kill_agent,
    "break-images": _break_images,
    "block-tcp-to": _block_tcp_to,
    "break-criu-conf": _break_criu_conf,
}


def run(ops: "Migrations", action: str, name: str, **args: Any) -> None:
    fn = ACTIONS.get(action)
    if fn is None:
        raise errors.ConfigError(f"No fault {action!r}; known: {', '.join(sorted(ACTIONS))}.")
    log.warning("fault %s for %s %s", action, name, args)
    fn(ops, name, **args)
