"""The source host's side of one container's migration.

    out = Outgoing(ctx, "db", mode=Mode.POSTCOPY)
    out.presync(address, port, token)       # PREPARED: the writable layer, while it runs
    out.arm(address, port)                  # ARMED: runc + CRIU wait at their gate
    out.checkpoint(service_ip, address, upper, images)   # FROZEN: locked, frozen, dumped (page
                                            # server up), last changes and images sent
    out.isolate()                           # SWITCHED: the stale copy cut off the network
    out.wait_dump(); out.finish(service_ip) # DONE: every page served, the container gone here
    out.rollback(service_ip)                # ROLLED_BACK: it runs here again, as it was

Post-copy dumps with ``--leave-running``, so until ``finish`` the container can always go on
here; a stop-and-copy dump ends it, and a rollback restores it from its images.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import shutil
import socket
import subprocess
import threading

from cloudmig import errors
from cloudmig.agent.api import Dumped, DumpEnd, Mode, Sent
from cloudmig.agent.side import HostContext, Side, State
from cloudmig.network import hold
from cloudmig.runtime import criu, dump, hot_pages, mounts, restore, smaps_ahead, transfer
from cloudmig.timing import Steps

log = logging.getLogger(__name__)

DUMP_ROLLBACK_WAIT_S = 60          # a dump told to stop serving pages ends within this
HOLD_CLOSE_TIMEOUT_S = 10          # a released hold removes its rules (one iptables-restore) within this


class Outgoing(Side):
    role = "outgoing"

    def __init__(self, ctx: HostContext, name: str, mode: Mode) -> None:
        super().__init__(ctx, name)
        self.mode = mode
        self.manifest: dict = {}
        self.dump: dump.LazyDump | dump.AdoptedDump | None = None
        self.held: hold.Hold | None = None
        self.released: hold.Hold | None = None   # its rules go in the background
        self.adopted = False
        self.connected: dict[str, socket.socket] = {}   # to the destination's receivers, ahead
        self.lock_armed = False            # the network lock waits, dormant, for the freeze
        self.hot: dict[int, hot_pages.Pages] = {}     # pages sent ahead of the freeze, by vpid
        self.hot_bytes = 0

    @classmethod
    def adopt(cls, ctx: HostContext, name: str, mode: Mode, state: State) -> "Outgoing":
        """A migration an agent that died since left here past its freeze, taken over from
        its journal: its dump (post-copy) still serves pages; its holder died with it."""
        out = cls(ctx, name, mode)
        out.state, out.adopted = state, True
        if mode.lazy:
            out.dump = dump.AdoptedDump(out.work("src"))
        return out

    # ------------------------------------------------------------------ before the freeze
    def presync(self, address: str, port: int, token: str) -> Sent:
        upper = self.runtime.bundle(self.name).upper
        self.manifest = transfer.manifest(upper)
        return Sent(bytes=transfer.send(upper, address, port, token))

    def arm(self, address: str, port: int, receivers_at: str, ports: dict[str, int],
            hot: list | None = None) -> list[str]:
        """Post-copy: start the dump's runc and CRIU, which wait at their gate until
        ``checkpoint``. The destination's receivers at ``receivers_at`` (``ports`` by what
        they receive: "upper", "images") are connected now, so that the freeze's transfers do
        not wait for a handshake (a WAN's round trip). With ``hot`` (a receiver's [port,
        token]), the pages the container will likely touch first go there now
        (cloudmig.runtime.hot_pages). Returns the container's stdio paths (the destination's
        runc needs them before its CRIU starts)."""
        self.expect("arm", State.PREPARED)
        self.net.ensure_tunnels()          # the page server binds this host's tunnel address
        descriptors = self.runtime.external_descriptors(self.name)
        try:
            self.connected = {what: transfer.connect(receivers_at, port) for what, port in ports.items()}
            if self.mode.lazy:
                self.dump = dump.LazyDump.arm(self.runtime, self.name, self.images, self.work("src"),
                                              address, port)
            self.net.arm_lock(self.name)
            self.lock_armed = True
            if self.mode.lazy and hot:
                self._send_hot(receivers_at, *hot)
            if self.mode.lazy:
                # last: the closer to the freeze, the likelier the mappings are still these
                smaps_ahead.take(self.runtime.pids(self.name), dump.smaps_dir(self.work("src")))
        except BaseException:
            self._call_off_dump()
            self._disarm_lock()
            raise
        self.advance(State.ARMED)
        return descriptors

    def _send_hot(self, address: str, port: int, token: str) -> None:
        self.hot = hot_pages.scan(self.runtime.pids(self.name))
        ahead = self.work("hot")
        shutil.rmtree(ahead, ignore_errors=True)
        hot_pages.write(self.hot, ahead)
        try:
            # acknowledged: all of it must be there before the freeze (over a WAN a new
            # connection's slow start takes round trips), or it is of no use in it
            self.hot_bytes = transfer.send_files(ahead, address, port, token, compress=True)
        finally:
            shutil.rmtree(ahead, ignore_errors=True)

    def disarm(self) -> None:
        """Undo ``arm``: the armed dump is called off; the container was never touched."""
        if self.state is State.ARMED:
            self._call_off_dump()
            self._disarm_lock()
            shutil.rmtree(self.dir, ignore_errors=True)
            self.advance(State.PREPARED)

    def _disarm_lock(self) -> None:
        """The dormant lock goes (it would drop nothing, but it is not ours to leave)."""
        self.net.unlock_container(self.name)
        self.lock_armed = False

    def hold(self, service_ip: str, endpoints: list[list], not_from: str | None = None) -> None:
        """From now on the container's packets wait in the kernel instead of reaching it
        (cloudmig.network.hold); ``release_hold`` lets them go on, wherever the service is
        routed then. ``endpoints``: its published (public address, port, proto) here;
        ``not_from``: the tunnel from the destination (see Hold.start)."""
        self.expect("hold", State.ARMED)
        self.held = hold.Hold.start(self.name, service_ip, [tuple(e) for e in endpoints], not_from)

    def release_hold(self) -> int:
        """Let the held packets go on (after the switch: to the new home). How many there were."""
        if self.held is None:
            if self.adopted:
                hold.release_orphans(self.name)     # its holder died: its rules let packets pass
            return 0
        held, self.held = self.held, None
        self.released = held
        return held.release()

    def _hold_gone(self) -> None:
        """The released hold's rules are removed (they let packets pass meanwhile)."""
        if self.released is not None:
            self.released.wait_closed(HOLD_CLOSE_TIMEOUT_S)

    # ------------------------------------------------------------------ the freeze
    def checkpoint(self, service_ip: str, address: str, upper: list, images: list,
                   flags: list | None = None) -> Dumped:
        """Lock, freeze and dump the container, and list its TCP connections (while CRIU
        works: they cannot change once the container is locked). Then, to the destination's
        ``address`` and its receivers (``upper``, ``images``: [port, token]), send the
        writable layer's last changes and CRIU's images, both at once, in the same call: the
        controller's call for them was a round trip (a WAN's, 50 ms, in the bench) inside the
        freeze."""
        self.expect("checkpoint", State.ARMED)
        steps = Steps()
        with steps("tunnel_check"):     # ~1 ms: the page server about to bind needs its address
            self.net.ensure_tunnels()
        # silence the container before CRIU freezes it: see cloudmig.network.lock
        with steps("lock"):
            self.net.lock_container(self.name, armed=self.lock_armed)
        listing = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        connections = listing.submit(self.net.connections, service_ip)
        listing.shutdown(wait=False)
        # frozen before CRIU starts: CRIU then leaves the freezing to us (and the cgroup
        # frozen after a --leave-running dump: a rollback thaws it with `runc resume`)
        with steps("cgroup_freeze"):
            self.runtime.freeze(self.name)
        self.advance(State.FROZEN)
        # the pages sent ahead are judged while CRIU dumps: the container is frozen, and CRIU
        # touches none of them (cloudmig.runtime.hot_pages)
        verdict: concurrent.futures.Future | None = None
        if self.hot:
            judging = concurrent.futures.ThreadPoolExecutor(max_workers=1)
            verdict = judging.submit(self._timed, steps, "hot", hot_pages.write_verdicts, self.hot, self.images)
            judging.shutdown(wait=False)
        with steps("criu"):
            if self.dump is not None:
                self.dump.go()
                self.dump.wait_ready()
            else:
                dump.full_dump(self.runtime, self.name, self.images, self.work("src"))
        self.net.ensure_tunnels()          # ~1 ms; a tunnel that died is back before we send
        if self.dump is not None and flags:
            self._check_flags(address, *flags)
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            fs = pool.submit(self._timed, steps, "fs_sync", self._final_sync, address, *upper,
                             self.connected.pop("upper", None))
            img = pool.submit(self._judged_images, steps, verdict, address, *images,
                              self.connected.pop("images", None))
            sent_upper, sent_images = fs.result(), img.result()
        hot = {}
        if verdict is not None:
            hot = dataclasses.asdict(verdict.result()) | {"sent": sum(len(p.addrs) for p in self.hot.values()),
                                                          "sent_bytes": self.hot_bytes}
        return Dumped(dump_ms=steps.total_ms, steps_ms=steps.ms, connections=connections.result(),
                      upper=sent_upper, images=sent_images, hot=hot)

    def _check_flags(self, address: str, port: int, token: str) -> None:
        """Frozen and dumped (CRIU's parasite, which a walk of smaps would hold up, is gone):
        were the flags CRIU took from the copies of smaps still right? The verdict goes into
        the destination's receiver, which its restore awaits before it unlocks the container:
        the walk (~13 ms a GiB) overlaps the images' transfer and the restore instead of
        lengthening the dump (cloudmig.runtime.smaps_ahead)."""
        sock = self.connected.pop("flags", None)

        def check() -> None:
            out = self.work("flags")
            try:
                try:
                    checked = smaps_ahead.check(smaps_ahead.look(dump.smaps_dir(self.work("src"))),
                                                smaps_ahead.used_in_log(self._dump_log()))
                    verdict = {"ok": True} | dataclasses.asdict(checked)
                except errors.CloudmigError as exc:
                    verdict = {"ok": False, "error": exc.message, "hint": exc.hint}
                except Exception as exc:       # unknown: the flags cannot be vouched for
                    verdict = {"ok": False, "error": f"The mappings' flags could not be checked: {exc}"}
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                (out / smaps_ahead.VERDICT).write_text(json.dumps(verdict))
                transfer.send_files(out, address, port, token, await_ack=False, sock=sock)
            except Exception as exc:          # the destination's receiver breaks off: it fails there
                log.warning("the check of %s's mappings' flags was not sent: %s", self.name, exc)
                if sock is not None:
                    sock.close()
        threading.Thread(target=check, name=f"flags-{self.name}", daemon=True).start()

    def _dump_log(self) -> str:
        try:
            return (self.work("src") / "dump.log").read_text(errors="replace")
        except OSError:
            return ""

    def _judged_images(self, steps: Steps, verdict: concurrent.futures.Future | None, address: str,
                       port: int, token: str, sock: socket.socket | None) -> Sent:
        """The images, with the verdict on the pages sent ahead."""
        if verdict is not None:
            verdict.result()
        with steps("images"):
            return self._send_images(address, port, token, sock)

    @staticmethod
    def _timed(steps: Steps, name: str, fn, *args):
        with steps(name):
            return fn(*args)

    def _final_sync(self, address: str, port: int, token: str, sock: socket.socket | None) -> Sent:
        upper = self.runtime.bundle(self.name).upper
        only, delete = transfer.changes(self.manifest, transfer.manifest(upper))
        # the destination's restore waits for this receiver and says whether all of it came
        sent = transfer.send(upper, address, port, token, only=only, delete=delete, await_ack=False, sock=sock)
        return Sent(bytes=sent, files=len(only), deleted=len(delete))

    def _send_images(self, address: str, port: int, token: str, sock: socket.socket | None) -> Sent:
        # a lazy dump's images are small and compress well; a full dump's pages go as they are.
        # The destination's restore waits for its receiver, which says whether all of it came.
        return Sent(bytes=transfer.send_files(self.images, address, port, token, compress=self.mode.lazy,
                                              await_ack=False, sock=sock))

    # ------------------------------------------------------------------ after the resume
    def switch_over(self, service_ip: str, tunnel_ifname: str) -> int:
        """The destination runs and listens: the service IP goes into the tunnel, then the
        packets held since the freeze follow it, then (post-copy) the source copy's uplink is
        cut: when CRIU ends the lazy dump it resumes the now stale copy for a moment before it
        is killed, and it must not talk to anyone. One call: on a WAN each is a round trip."""
        if self.state is State.SWITCHED:
            return 0                 # done already (a controller that reconnected asks again)
        self.expect("switch_over", State.FROZEN)
        self.net.ensure_tunnels()          # the service IP is about to be routed into it
        self.net.route_service(service_ip, ifname=tunnel_ifname)
        held = self.release_hold()
        if self.mode.lazy:
            self.net.set_uplink(self.name, up=False)
        self.advance(State.SWITCHED)
        return held

    def wait_dump(self, timeout_s: float | None = None) -> DumpEnd:
        """Post-copy: returns once the page server served its last page."""
        if self.state is State.DONE:
            return DumpEnd(rc=0, stats={})
        self.expect("wait_dump", State.FROZEN, State.SWITCHED)
        rc = 0
        if self.dump is not None:
            try:
                rc = self.dump.wait(timeout_s)
            except subprocess.TimeoutExpired:
                return DumpEnd(rc=None, stats={})
        return DumpEnd(rc=rc, stats=criu.read_dump_stats(self.work("src")))

    def finish(self, service_ip: str) -> None:
        """The container lives elsewhere now: remove it here, but keep its published ports,
        which forward to it. The reply pins this host had for it as a destination go: replies
        that come back here now belong to this host's own forwarded clients."""
        if self.state is State.DONE:
            return
        self.expect("finish", State.FROZEN, State.SWITCHED)
        self.net.unpin_replies(service_ip)
        self.runtime.remove(self.name)
        self.net.delete_container_netns(self.name)
        shutil.rmtree(self.dir, ignore_errors=True)
        self._hold_gone()
        self.advance(State.DONE)

    def take_back(self, service_ip: str) -> None:
        """After the switch, when the destination's copy was lost before its memory arrived:
        the frozen copy here (post-copy dumps leave it running) runs again, as it was at the
        freeze; what the container did on the destination since is gone."""
        self.expect("take_back", State.FROZEN, State.SWITCHED)
        if not self.mode.lazy:
            raise errors.MigrationError(f"{self.name} was dumped whole (stop-and-copy); there is no "
                                        "copy left here to take back.")
        self._call_off_dump()
        recover(self.ctx, self.name, self.mode, service_ip, known=True)
        self._hold_gone()
        self.advance(State.ROLLED_BACK)

    # ------------------------------------------------------------------ failure
    def rollback(self, service_ip: str) -> None:
        """Resume the container here after a failed migration, as it was."""
        if self.state in (State.DONE, State.SWITCHED):
            raise errors.MigrationError(f"{self.name} already runs on its destination; it cannot "
                                        "be rolled back to this host.")
        self._call_off_dump()
        recover(self.ctx, self.name, self.mode, service_ip, known=True)
        self._hold_gone()
        self.advance(State.ROLLED_BACK)

    def _call_off_dump(self) -> None:
        for sock in self.connected.values():     # the destination's receivers see the end
            sock.close()
        self.connected = {}
        if self.dump is not None:
            d, self.dump = self.dump, None
            d.abort()


def recover(ctx: HostContext, name: str, mode: Mode, service_ip: str, known: bool) -> None:
    """Make ``name`` run here again after a failed migration: what an earlier agent armed is
    killed (``known`` False: this agent never saw the migration), a frozen container is
    thawed, one that a full dump ended is restored from its images; then its network."""
    runtime = ctx.runtime
    if not known:
        dump.forget_orphan(runtime, name, ctx.migration_dir(name) / "work-src")
    status = runtime.state(name)["status"]
    images = ctx.migration_dir(name) / "images"
    if status == "paused":            # frozen by us; the dump failed or left it so
        runtime.runc("resume", name)
    elif status != "running" and mode is Mode.STOPCOPY and images.exists():
        restore.restore_now(runtime, name, images, ctx.migration_dir(name) / "work-rollback")
    ctx.net.unlock_container(name)
    ctx.net.set_uplink(name, up=True)
    ctx.net.route_service(service_ip, container=name)
    status = runtime.state(name)["status"]
    if status != "running":
        raise errors.MigrationError(f"Could not resume {name} on the source: it is {status}.",
                                    hint=f"Inspect {ctx.migration_dir(name)} on the source host.")
    # its images and CRIU's logs served their purpose (a stop-and-copy image is as big as the
    # container's memory)
    mounts.unmount_under(ctx.migration_dir(name))
    shutil.rmtree(ctx.migration_dir(name), ignore_errors=True)
