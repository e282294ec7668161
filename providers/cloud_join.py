"""A cloud host joins by itself: wait for its first boot, then adopt it over SSH.

    record = aws.create_host(spec, progress)            # the VM runs; cloud-init is at work
    cloud_join.join(inv, record, progress, timeout_s=900)   # ... ready, or FirstBootFailed

The host's SSH key was made by the controller and pinned before the VM existed
(``cloud_host.HostAccess``), so even the first contact is authenticated. Steps, each a
progress line: sshd answers; first boot's status file (``cloudinit.BootPaths.status``) says
``ok`` (or ``failed``/``agent-failed``: the failed bootstrap step is read from the host's log
and quoted); cloudmig is installed there unless the image carried this very version (the same
shipping as ``host add``); the agent is started unless first boot did; ``ping`` and ``doctor``
through the SSH relay; state ``ready``.
"""

from __future__ import annotations

import shlex
import time

from cloudmig import distribution, errors
from cloudmig.inventory import HostRecord, Inventory
from cloudmig.providers import Progress, cloudinit
from cloudmig.providers.ssh import install, reach_agent
from cloudmig.providers.ssh.remote import AgentLayout
from cloudmig.providers.ssh.session import Session

__all__ = ["join", "FirstBootFailed", "DEFAULT_TIMEOUT_S"]

DEFAULT_TIMEOUT_S = 900             # a real first boot installs packages and builds CRIU
# between SSH polls of a booting host: soon at first (a small image, or a simulated cloud, is up
# in seconds), then every second (a real first boot takes minutes)
POLL_S = (0.2, 0.3, 0.5, 1.0)
LOG_TAIL_LINES = 5
FINAL_STATUSES = ("ok", "failed", "agent-failed")
_LOG_MARK = "--cloudmig-first-boot-log--"


def _pauses():
    yield from POLL_S
    while True:
        yield POLL_S[-1]


class FirstBootFailed(errors.ProviderError):
    """The host's first boot failed or did not end in time; the host is kept for inspection."""


def _layout(record: HostRecord) -> AgentLayout:
    return AgentLayout(host=record.name)         # where first boot put the agent (the defaults)


def _wait_ssh(sess: Session, record: HostRecord, deadline: float, progress: Progress) -> None:
    progress(f"{record.name}: waiting for sshd at {record.public_address} (host key pinned before first contact)")
    last = None
    pauses = _pauses()
    while True:
        try:
            sess.run("true", what="the first SSH contact", timeout_s=30)
            progress(f"{record.name}: sshd answers with the pinned host key")
            return
        except errors.ProviderError as exc:
            if exc.code == "ssh-hostkey":
                raise       # someone else answers at that address: never retried into acceptance
            last = exc
        if time.monotonic() > deadline:
            raise FirstBootFailed(f"{record.name}: sshd did not answer at {record.public_address} in time ({last}).",
                                  hint=_keep_hint(record), code="first-boot-timeout")
        time.sleep(next(pauses))


def _wait_status(sess: Session, record: HostRecord, deadline: float, progress: Progress) -> str:
    status_file = shlex.quote(cloudinit.BOOTSTRAP_STATUS_PATH)
    log_file = shlex.quote(cloudinit.BootPaths.log)
    seen = 0
    pauses = _pauses()
    while True:
        res = sess.run(f"cat {status_file} 2>/dev/null; echo {_LOG_MARK}; tail -n +{seen + 1} {log_file} 2>/dev/null",
                       what="reading first boot's progress", check=False)
        status, _, new_log = res.stdout.partition(_LOG_MARK)
        new_log = new_log.lstrip("\n")
        for line in new_log.splitlines():
            progress(f"{record.name}:   {line}")
        seen += len(new_log.splitlines())
        status = status.strip()
        if status in FINAL_STATUSES:
            return status
        if time.monotonic() > deadline:
            raise FirstBootFailed(f"{record.name}: first boot did not end in time (status "
                                  f"{status or 'not written yet'}).", hint=_keep_hint(record),
                                  code="first-boot-timeout")
        time.sleep(next(pauses))


def _keep_hint(record: HostRecord) -> str:
    return (f"The host is kept for inspection: ssh -i {record.agent.get('identity_file', 'KEY')} "
            f"{record.agent.get('ssh_target')} (see {cloudinit.BootPaths.log}); "
            f"`cloudmig host destroy {record.name}` removes it.")


def _failure(sess: Session, record: HostRecord, status: str) -> FirstBootFailed:
    log = sess.run(f"cat {shlex.quote(cloudinit.BootPaths.log)} 2>/dev/null", what="reading first boot's log",
                   check=False).stdout
    tail = " / ".join(log.strip().splitlines()[-LOG_TAIL_LINES:]) or "no log"
    if status == "agent-failed":
        return FirstBootFailed(f"{record.name}: first boot installed the host but its agent did not start: {tail}",
                               hint=_keep_hint(record), code="first-boot")
    return FirstBootFailed(f"{record.name}: first boot failed at bootstrap step "
                           f"{distribution.failed_step(log)}: {tail}", hint=_keep_hint(record), code="first-boot")


def join(inv: Inventory, record: HostRecord, progress: Progress, timeout_s: float = DEFAULT_TIMEOUT_S) -> HostRecord:
    """Wait for the host's first boot and adopt it; ``ready`` on return. Raises
    FirstBootFailed (the host kept) when first boot failed or took longer than ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    sess, layout = Session(record), _layout(record)
    _wait_ssh(sess, record, deadline, progress)
    status = _wait_status(sess, record, deadline, progress)
    if status != "ok":
        raise _failure(sess, record, status)
    progress(f"{record.name}: first boot ok")
    install.ensure(sess, layout, progress, timeout_s=max(1.0, deadline - time.monotonic()))
    running = sess.run(f"[ -S {shlex.quote(layout.socket)} ] && echo running; true", what="looking for the agent")
    if running.stdout.strip() != "running":
        started = sess.run(layout.start_script("auto"), what="starting the agent").stdout.split()
        progress(f"{record.name}: agent started ({' '.join(started[1:3])})")
    else:
        progress(f"{record.name}: agent started by first boot")
    reach_agent(inv, record, progress)
    return record
