"""The destination host's side of one container's migration.

    inc = Incoming.prepare(ctx, "db", mode, image=..., layers=[...], ...)   # PREPARED: netns, bundle
    rx = inc.receive("upper", bind_address)   # receivers on the tunnel address
    inc.arm(descriptors)                      # ARMED: runc restore waits at its gate
    inc.restore(page_server, port, service_ip)  # RESUMED: it runs here, routed and unlocked
    inc.go_live()                             # SWITCHED (routes and unlocks if an adopted side did not)
    inc.finish()                              # DONE: every lazy page arrived
    inc.abort(service_ip)                     # ROLLED_BACK: nothing of it left here

Until the restore succeeded the container stays network-locked: a copy that is rolled back
must never have said anything to a client. Once it succeeded there is no way back, so the
agent routes the service IP to it and lifts the lock before the restore returns (~1 ms: one
route and one netlink message, network/_nftnl.py); the controller then lets the source switch
at once, and the source lets the packets it held go only after that. ``go_live`` records the
switch here (and routes and unlocks for an agent that took the migration over after the
restore).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import shutil
import subprocess
import threading
from pathlib import Path

from cloudmig import errors
from cloudmig.agent.api import LazyProgress, Mode, Receiver, Restored
from cloudmig.agent.side import HostContext, Side, State
from cloudmig.runtime import hot_pages, lazy_pages, mounts, restore, smaps_ahead, transfer
from cloudmig.timing import Steps

log = logging.getLogger(__name__)

LAZY_FINISH_TIMEOUT_S = 3600      # after the last page, the daemon exits at once
MAX_PROGRESS_WAIT_S = 1.0        # lazy_progress(wait_s): the longest an answer is held back


class Incoming(Side):
    role = "incoming"

    def __init__(self, ctx: HostContext, name: str, mode: Mode) -> None:
        super().__init__(ctx, name)
        self.mode = mode
        self.receivers: dict[str, transfer.Receiver] = {}
        self.armed: restore.Restore | None = None
        self._live = False          # routed and unlocked by this agent (in the restore)
        self.routed = False         # the service IP routed to the new namespace at the prepare
        self.daemon: lazy_pages.LazyPagesDaemon | None = None
        self.lost: str | None = None       # why the container's memory can no longer arrive
        self.ahead: concurrent.futures.Future | None = None   # the pages sent ahead, read

    @classmethod
    def adopt(cls, ctx: HostContext, name: str, mode: Mode, state: State) -> "Incoming":
        """A migration an agent that died since left here after the restore, taken over from
        its journal: its container runs, its lazy-pages daemon (if any) still pulls pages."""
        inc = cls(ctx, name, mode)
        inc.state = state
        if mode.lazy:
            inc.daemon = lazy_pages.LazyPagesDaemon.adopt(inc.work("dst"))
            if state in (State.RESUMED, State.SWITCHED):
                inc.watch()
        return inc

    def watch(self) -> None:
        """Watch the lazy-pages daemon in the background (see ``_watch_daemon``)."""
        threading.Thread(target=self._watch_daemon, name=f"lazy-watch-{self.name}", daemon=True).start()

    @classmethod
    def prepare(cls, ctx: HostContext, name: str, mode: Mode, image: str, command: list[str],
                env: dict[str, str], service_ip: str, memory_limit_bytes: int | None,
                layers: list[str]) -> "Incoming":
        if ctx.runtime.bundle(name).root.exists():
            raise errors.PreflightError(f"Container {name} already exists on the destination.")
        # a host the container lived on before keeps forwarding to it until the switch
        netns_path, routed = ctx.net.create_container_netns(name, service_ip, keep_route=True)
        # silent until the controller switches the network over
        ctx.net.lock_container(name)
        try:
            ctx.runtime.prepare(name, image=image, layers=layers, command=command, env=env,
                                netns_path=netns_path, memory_limit_bytes=memory_limit_bytes,
                                mount_now=False)
        except BaseException:
            ctx.net.delete_container_netns(name)
            raise
        inc = cls(ctx, name, mode)
        inc.routed = routed
        shutil.rmtree(inc.dir, ignore_errors=True)
        inc.images.mkdir(parents=True)
        return inc

    def receive(self, what: str, bind_address: str) -> Receiver:
        """A receiver for the writable layer ("upper"), CRIU's images ("images"), the pages
        sent ahead of the freeze ("hot": cloudmig.runtime.hot_pages) or the source's check of
        the mappings' flags ("flags": cloudmig.runtime.smaps_ahead)."""
        self.expect(f"receive {what}", State.PREPARED, State.ARMED)
        dest = {"upper": self.runtime.bundle(self.name).upper, "images": self.images, "hot": self.hot,
                "flags": self.flags}[what]
        dest.mkdir(parents=True, exist_ok=True)
        # a lazy dump's images are small, and come inside the freeze
        small = what == "images" and self.mode.lazy
        rx = transfer.Receiver.start(dest, bind_address, rcvbuf=transfer.FREEZE_RCVBUF_BYTES if small else None)
        self.receivers[what] = rx
        return Receiver(port=rx.port, token=rx.token)

    @property
    def hot(self) -> Path:
        return self.dir / "hot"

    @property
    def flags(self) -> Path:
        """Where the source's check of the mappings' flags arrives."""
        return self.dir / "flags"

    @property
    def hot_parent(self) -> Path:
        """Where the pages sent ahead are written as a parent image set."""
        return self.dir / "hot-parent"

    def receive_wait(self, what: str) -> int:
        """Strict: the transfer into ``what`` must have arrived whole."""
        rx = self.receivers.pop(what, None)
        if rx is None:
            raise errors.MigrationError(f"No transfer of {what} for {self.name} is expected here.")
        return rx.wait()

    def arm(self, descriptors: list[str], page_server: str, port: int) -> None:
        """Before the freeze: start runc restore, which sets up and waits at its gate, and
        post-copy's lazy-pages daemon, which reads the images only once the restore connects
        (our CRIU patch) and reaches the page server only once the restore sent its tasks.
        Its start (a fork and an exec here, CRIU's own start there: ~3-5 ms) sat inside the
        freeze."""
        self.expect("arm", State.PREPARED)
        work = self.work("dst")
        if self.mode.lazy:
            self._read_ahead()
            self.daemon = lazy_pages.LazyPagesDaemon.spawn(self.images, work, page_server, port)
        try:
            self.armed = restore.Restore.arm(self.runtime, self.name, self.images, work,
                                             lazy_pages=self.mode.lazy, descriptors=descriptors)
            if self.daemon is not None:
                self.daemon.wait_listening()
        except BaseException:
            if self.armed is not None:
                self.armed.abort()
                self.armed = None
            if self.daemon is not None:
                self.daemon.kill()
                self.daemon = None
            raise
        self.advance(State.ARMED)

    def restore(self, page_server: str, port: int, service_ip: str, pins: list[dict] | None = None) -> Restored:
        """Inside the freeze: the transfers arrived (their receivers were opened before it),
        the rootfs is mounted, CRIU restores; with lazy pages, the daemon proves it reached
        the page server (without it the restored copy would fault forever). ``pins``, the
        connections that came since the prepare, are pinned beside it, before the unlock."""
        self.expect("restore", State.ARMED)
        steps = Steps()
        armed, self.armed = self.armed, None
        pinning = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        pinned = pinning.submit(self.net.pin_replies, service_ip, pins) if pins else None
        pinning.shutdown(wait=False)
        try:
            with steps("receive"):
                for what in ("upper", "images"):
                    rx = self.receivers.pop(what, None)
                    if rx is not None:
                        rx.wait()
            with steps("hot"):
                installed = self._install_hot()
            with steps("mount"):
                self.runtime.mount(self.name)
                armed.bind_rootfs()
            armed.go(steps)
            pid = armed.finish(self.daemon, (page_server, port) if self.daemon else None, steps)
            with steps("pins"):
                if pinned is not None:
                    pinned.result()
            with steps("flags"):
                smaps = self._flags_checked()
        except BaseException:
            if pinned is not None:
                concurrent.futures.wait([pinned])    # before anything undoes them
            armed.abort()
            raise
        self.advance(State.RESUMED)
        # routed and unlocked before answering (~1 ms since the unlock is one netlink message):
        # the controller can then let the source switch at once, one round trip sooner
        with steps("live"):
            self._route_and_unlock(service_ip, steps)
        self._live = True
        if self.daemon is not None:
            self.watch()
        return Restored(pid=pid, restore_ms=steps.total_ms, steps_ms=steps.ms, hot_installed=installed,
                        smaps=smaps)

    def _flags_checked(self) -> dict:
        """Post-copy: the source's check of the mappings' flags CRIU took from copies of
        smaps (cloudmig.runtime.smaps_ahead), awaited before the container is unlocked: a
        stale one fails the restore, and the migration rolls back."""
        rx = self.receivers.pop("flags", None)
        if rx is None:
            return {}
        rx.wait()
        verdict = json.loads((self.flags / smaps_ahead.VERDICT).read_text())
        if not verdict.pop("ok"):
            raise errors.CheckpointError(verdict["error"], hint=verdict.get("hint"))
        return verdict

    def _read_ahead(self) -> None:
        """The pages the source sends ahead (``receive("hot")``) become a parent image set as
        they arrive, in the background: not inside the freeze (pycriu, which the images'
        rewrite needs, is imported there too)."""
        rx = self.receivers.get("hot")
        if rx is None:
            return

        def read() -> dict:
            rx.wait()
            return hot_pages.load_ahead(self.hot, self.hot_parent)
        reader = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"hot-{self.name}")
        self.ahead = reader.submit(read)
        reader.shutdown(wait=False)

    def _install_hot(self) -> int:
        """The pages sent ahead and known at the freeze become present pages of the images.
        If that fails before the pagemap is replaced (its one change), the pages come
        lazily, like the others."""
        self.receivers.pop("hot", None)
        if self.ahead is None:
            return 0
        if not self.ahead.done():     # not all here yet (a slow link): not waited for in the freeze
            log.info("pages sent ahead for %s not read yet: they come lazily", self.name)
            return 0
        try:
            return hot_pages.merge(self.images, self.ahead.result(), self.hot_parent)
        except Exception as exc:          # a bad file, no pycriu: the pages come lazily
            log.warning("pages sent ahead not installed for %s: %s", self.name, exc)
            return 0

    def _watch_daemon(self) -> None:
        """The moment the lazy-pages daemon ends without having moved every page, the
        container is frozen and cut off: the kernel no longer routes its page faults anywhere,
        and it must not run on with memory it never received (nor answer anyone)."""
        rc = self.daemon.wait()
        if rc != 0 and self.state not in (State.DRAINED, State.DONE, State.ROLLED_BACK):
            self._lose(f"the lazy-pages daemon ended (exit {rc}) before every page arrived")

    def _lose(self, why: str) -> None:
        if self.lost is not None:
            return
        self.runtime.freeze(self.name)
        self.net.lock_container(self.name)
        stats = self.daemon.stats() if self.daemon is not None else {}
        missing = stats.get("lazy_pages", 0) - stats.get("copied_pages", 0)
        self.lost = f"{why}; {missing} of {stats.get('lazy_pages', 0)} pages never arrived"

    def _route_and_unlock(self, service_ip: str, steps: Steps | None = None) -> None:
        steps = steps or Steps()
        with steps("live.route"):
            # routed here at the prepare, and no tunnel's keeper will route it elsewhere: a
            # netlink socket in the host's namespace and a route less inside the freeze
            if not self.routed or self.net.routed_to_tunnel_since(service_ip):
                self.net.route_service(service_ip, container=self.name)
        with steps("live.unlock"):
            self.net.unlock_container(self.name)

    def go_live(self, service_ip: str) -> None:
        """Return once the restored container is routed and unlocked (begun by ``restore``;
        done here for a migration adopted from an agent that died since)."""
        if self.state in (State.SWITCHED, State.DRAINED, State.DONE):
            return                   # done already (a controller that reconnected asks again)
        self.expect("go_live", State.RESUMED)
        if not self._live:           # an agent that took the migration over after the restore
            self._route_and_unlock(service_ip)
        self.advance(State.SWITCHED)

    def lazy_progress(self, wait_s: float = 0.0) -> LazyProgress:
        """Where the lazy transfer is; with ``wait_s``, once it ended or after that long (at
        most MAX_PROGRESS_WAIT_S): the controller learns the end when it happens, not at its
        next poll."""
        self.expect("lazy_progress", State.RESUMED, State.SWITCHED, State.DRAINED, State.DONE)
        if self.daemon is None:
            return LazyProgress(done=True, rc=0)
        if wait_s > 0 and self.daemon.returncode is None:
            try:
                self.daemon.wait(min(wait_s, MAX_PROGRESS_WAIT_S))
            except subprocess.TimeoutExpired:
                pass
        rc = self.daemon.returncode
        if rc not in (None, 0) and self.lost is None:      # an adopted daemon has no watcher
            self._lose(f"the lazy-pages daemon ended (exit {rc}) before every page arrived")
        return LazyProgress(done=rc is not None, rc=rc, page_size=lazy_pages.PAGE_SIZE,
                            lost=self.lost, **self.daemon.stats())

    def finish(self) -> LazyProgress:
        """Wait for the last lazy page; the migration is complete on this side."""
        if self.state is State.DONE:
            return LazyProgress(done=True, rc=0, page_size=lazy_pages.PAGE_SIZE)
        self.expect("finish", State.SWITCHED, State.DRAINED)
        rc, stats = 0, {}
        if self.daemon is not None:
            try:
                rc = self.daemon.wait(LAZY_FINISH_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                return LazyProgress(done=False, page_size=lazy_pages.PAGE_SIZE, **self.daemon.stats())
            stats = self.daemon.stats()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.advance(State.DONE)
        return LazyProgress(done=True, rc=rc, page_size=lazy_pages.PAGE_SIZE, **stats)

    def drop(self, service_ip: str) -> None:
        """After the resume, when the container's memory can no longer arrive (its source or
        its daemon is gone): the incomplete copy is stopped and everything of it removed here,
        its published ports too."""
        self.lost = self.lost or "dropped"          # its daemon's end is no news any more
        if self.daemon is not None:
            self.daemon.kill()
        self.net.unpublish(owner=self.name)
        discard(self.ctx, self.name, service_ip)
        self.advance(State.ROLLED_BACK)

    def abort(self, service_ip: str) -> None:
        """Undo everything this incoming migration made here."""
        if self.state in (State.SWITCHED, State.DRAINED, State.DONE):
            raise errors.MigrationError(f"{self.name} already serves clients on this host; it "
                                        "cannot be rolled back from here.")
        if self.armed is not None:
            self.armed.abort()
            self.armed = None
        if self.daemon is not None:
            self.daemon.kill()
        for rx in self.receivers.values():
            rx.cancel()
        self.receivers.clear()
        discard(self.ctx, self.name, service_ip)
        self.advance(State.ROLLED_BACK)


def discard(ctx: HostContext, name: str, service_ip: str) -> None:
    """Remove whatever an incoming migration of ``name`` left here, known to this agent or
    not (an agent restarted to clean up finds an earlier agent's armed restore and daemon)."""
    restore.forget_orphans(ctx.runtime, name, ctx.migration_dir(name))
    # (nothing was published here yet: that happens at the switch; published rules of this
    # container on this host are those of a forwarder, and stay)
    ctx.runtime.remove(name)
    ctx.net.delete_container_netns(name)
    ctx.net.unpin_replies(service_ip)
    mounts.unmount_under(ctx.migration_dir(name))      # CRIU's cgroup yard, if a restore was killed
    shutil.rmtree(ctx.migration_dir(name), ignore_errors=True)
