"""The agent's side of a migration: operations on the source and on the destination host.

    src.call("mig.src_checkpoint", name="db", mode="postcopy", address=..., port=...)
    dst.call("mig.dst_restore", name="db", mode="postcopy", page_server=..., port=...)

The controller (cloudmig.migration.engine) calls these in order; each is host-local and
idempotent enough to be retried or undone (``mig.src_rollback``, ``mig.dst_abort``).
Per-container state between calls (the running dump, the lazy-pages daemon, the writable
layer's manifest, open receivers) lives in this object, i.e. in the agent process.
"""

from __future__ import annotations

import base64
import concurrent.futures
import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

from cloudmig import errors
from cloudmig.timing import Steps
from cloudmig.runtime import checkpoint, gate, transfer
from cloudmig.runtime import container as rt

log = logging.getLogger(__name__)

PROBE_ACCEPT_TIMEOUT_S = 10


class MigrationOps:
    def __init__(self, runtime: rt.Runtime, net) -> None:
        self.runtime = runtime
        self.net = net
        self._manifests: dict[str, dict] = {}
        self._dumps: dict[str, checkpoint.LazyCheckpoint] = {}
        self._restores: dict[str, checkpoint.Restore] = {}     # armed before the freeze
        self._lazy: dict[str, checkpoint.LazyPagesDaemon] = {}
        self._receivers: dict[tuple[str, str], transfer.Receiver] = {}
        self._probes: dict[str, socket.socket] = {}

    def handlers(self) -> dict:
        return {f"mig.{n}": getattr(self, n) for n in (
            "cpuinfo_dump", "cpuinfo_check", "memory", "free_port", "probe_listen", "probe_connect",
            "probe_close", "src_presync", "src_dump_arm", "src_dump_disarm", "src_checkpoint", "src_final_sync", "src_send_images",
            "src_isolate", "src_wait_dump", "src_rollback", "src_finish", "dst_prepare",
            "dst_restore_arm", "dst_go_live", "dst_receive", "dst_receive_wait", "dst_restore", "dst_lazy_progress", "dst_wait_lazy",
            "dst_abort")}

    # ------------------------------------------------------------------ paths
    def _mig_dir(self, name: str) -> Path:
        return self.runtime.host_dir / "migrations" / name

    def _images(self, name: str) -> Path:
        return self._mig_dir(name) / "images"

    def _work(self, name: str, side: str) -> Path:
        return self._mig_dir(name) / f"work-{side}"

    # ------------------------------------------------------------------ preflight
    def cpuinfo_dump(self) -> str:
        d = self.runtime.host_dir / "cpuinfo"
        d.mkdir(parents=True, exist_ok=True)
        res = subprocess.run([checkpoint.criu_path(), "cpuinfo", "dump", "-D", str(d)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise errors.PreflightError(f"criu cpuinfo dump failed: {res.stderr.strip()}")
        return base64.b64encode((d / "cpuinfo.img").read_bytes()).decode()

    def cpuinfo_check(self, image_b64: str) -> dict:
        d = self.runtime.host_dir / "cpuinfo-incoming"
        d.mkdir(parents=True, exist_ok=True)
        (d / "cpuinfo.img").write_bytes(base64.b64decode(image_b64))
        res = subprocess.run([checkpoint.criu_path(), "cpuinfo", "check", "-D", str(d)],
                             capture_output=True, text=True)
        return {"ok": res.returncode == 0, "detail": (res.stderr or res.stdout).strip()[-500:]}

    def memory(self, name: str | None = None) -> dict:
        """MemAvailable of this host, free disk under its state, and the container's RSS."""
        info = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0]) * 1024
        usage = shutil.disk_usage(self.runtime.host_dir)
        rss = 0
        if name:
            st = self.runtime.state(name)
            if st["status"] != "running":
                raise errors.PreflightError(f"Container {name} is {st['status']} on this host, not running.")
            rss = _tree_rss(int(st["pid"]))
        return {"mem_available": info.get("MemAvailable", 0), "disk_free": usage.free, "rss": rss}

    def free_port(self, address: str) -> int:
        return checkpoint.free_port(address)

    def probe_listen(self, address: str, port: int) -> None:
        """Listen on ADDRESS:PORT so the other host can prove it reaches it (then close)."""
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, port))
        s.listen(1)
        self._probes[f"{address}:{port}"] = s

    def probe_connect(self, address: str, port: int, timeout_s: float = PROBE_ACCEPT_TIMEOUT_S) -> dict:
        start = time.monotonic()
        try:
            with socket.create_connection((address, port), timeout=timeout_s):
                pass
        except OSError as exc:
            raise errors.PreflightError(
                f"This host cannot reach {address}:{port} (the page server's address) through "
                f"the tunnel: {exc}.", hint="Check the tunnel and any firewall between the hosts.") from exc
        return {"ms": (time.monotonic() - start) * 1000}

    def probe_close(self, address: str, port: int) -> None:
        s = self._probes.pop(f"{address}:{port}", None)
        if s:
            s.close()

    # ------------------------------------------------------------------ source
    def src_presync(self, name: str, address: str, port: int, token: str) -> dict:
        upper = self.runtime.bundle(name).upper
        self._manifests[name] = transfer.manifest(upper)
        sent = transfer.send(upper, address, port, token)
        return {"bytes": sent}

    def src_dump_arm(self, name: str, mode: str, address: str = "", port: int = 0) -> dict:
        """Before the freeze: start the post-copy dump's runc and CRIU, which wait at their
        gate (cloudmig.runtime.gate) until ``src_checkpoint``. Returns the container's stdio
        paths, which the destination's runc needs before its CRIU starts."""
        descriptors = self.runtime.external_descriptors(name)
        if mode == "postcopy":
            self._call_off_dump(name)
            self._dumps[name] = checkpoint.LazyCheckpoint.start(
                self.runtime, name, self._images(name), self._work(name, "src"), address, port, gated=True)
        return {"descriptors": descriptors}

    def src_dump_disarm(self, name: str) -> None:
        """The migration failed before its freeze: call off the armed dump."""
        if name in self._dumps:
            self._call_off_dump(name)
        else:   # armed by an agent that died since (see _forget_orphan_dump)
            self._forget_orphan_dump(name)
        gate.settle(self.runtime.bundle(name).criu_conf)

    def _forget_orphan_dump(self, name: str) -> None:
        """A dump this agent does not know was started by a previous agent. If that agent died
        while the dump was armed, CRIU read an empty configuration and dumped with runc's own
        options, and holds the container frozen for a page client that never comes: kill
        its runc and criu (one process group); the caller thaws the container."""
        checkpoint.kill_groups_mentioning(str(self._work(name, "src")))

    def _call_off_dump(self, name: str) -> None:
        """Abort the dump of ``name`` if it is armed (one that runs is left alone)."""
        dump = self._dumps.get(name)
        if dump is not None and dump.armed:
            del self._dumps[name]
            dump.abort()

    def src_checkpoint(self, name: str, mode: str, address: str = "", port: int = 0,
                       service_ip: str = "") -> dict:
        """Lock, freeze and dump the container; with ``service_ip``, also list its TCP
        connections (while CRIU works: they cannot change once the container is locked)."""
        images, work = self._images(name), self._work(name, "src")
        steps = Steps()
        # silence the container before CRIU freezes it: see cloudmig.network.lock
        with steps("lock"):
            self.net.lock_container(name)
        listing = None
        if service_ip:
            listing = concurrent.futures.ThreadPoolExecutor(max_workers=1)
            connections = listing.submit(self.net.connections, service_ip)
            listing.shutdown(wait=False)
        # frozen before CRIU starts: CRIU then leaves the freezing to us (and the cgroup
        # frozen after a --leave-running dump: a rollback thaws it with `runc resume`)
        with steps("cgroup_freeze"):
            self.runtime.freeze(name)
        with steps("criu"):
            if mode == "postcopy":
                dump = self._dumps.get(name)
                if dump is None or not dump.armed:
                    dump = checkpoint.LazyCheckpoint.start(self.runtime, name, images, work, address, port)
                    self._dumps[name] = dump
                try:
                    dump.go()
                    dump.wait_ready()
                except BaseException:
                    self._dumps.pop(name, None)
                    raise
            else:
                checkpoint.full_checkpoint(self.runtime, name, images, work)
        result = {"dump_ms": steps.total_ms, "steps_ms": steps.ms,
                  "images_bytes": checkpoint.dir_bytes(images)}
        if listing is not None:
            result["connections"] = connections.result()
        return result

    def src_final_sync(self, name: str, address: str, port: int, token: str) -> dict:
        upper = self.runtime.bundle(name).upper
        before = self._manifests.get(name, {})
        only, delete = transfer.changes(before, transfer.manifest(upper))
        sent = transfer.send(upper, address, port, token, only=only, delete=delete)
        return {"bytes": sent, "files": len(only), "deleted": len(delete)}

    def src_send_images(self, name: str, address: str, port: int, token: str) -> dict:
        return {"bytes": transfer.send_files(self._images(name), address, port, token)}

    def src_isolate(self, name: str) -> None:
        """Cut the source copy's uplink: when CRIU ends the lazy dump it resumes the (now
        stale) source copy for a moment before it is killed; it must not talk to anyone."""
        self.net.set_uplink(name, up=False)

    def src_wait_dump(self, name: str, timeout_s: float | None = None) -> dict:
        dump = self._dumps.get(name)
        if dump is None:
            return {"rc": 0, "stats": checkpoint.read_dump_stats(self._work(name, "src"))}
        try:
            rc = dump.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return {"rc": None}
        self._dumps.pop(name, None)
        return {"rc": rc, "stats": checkpoint.read_dump_stats(self._work(name, "src"))}

    def src_rollback(self, name: str, mode: str, service_ip: str) -> dict:
        """Resume the container here after a failed migration, as it was."""
        known = name in self._dumps
        dump = self._dumps.pop(name, None)
        if dump is not None and dump.armed:      # never let go: the container was not touched
            dump.abort()
            dump = None
        if not known:
            self._forget_orphan_dump(name)
        gate.settle(self.runtime.bundle(name).criu_conf)
        if dump is not None:
            if dump.proc.poll() is None:
                checkpoint.abort_page_server(dump.address, dump.port)
            try:
                dump.wait(timeout_s=60)
            except subprocess.TimeoutExpired:
                dump.proc.kill()
        state = self.runtime.state(name)["status"]
        if state == "paused":            # frozen by us; the dump failed or left it so
            self.runtime.runc("resume", name)
        elif state != "running" and mode == "stopcopy" and self._images(name).exists():
            # a full dump ended the container: bring it back from its images
            work = self._work(name, "rollback")
            work.mkdir(parents=True, exist_ok=True)
            checkpoint.restore(self.runtime, name, self._images(name), work)
        self.net.unlock_container(name)
        self.net.set_uplink(name, up=True)
        self.net.route_service(service_ip, container=name)
        state = self.runtime.state(name)["status"]
        if state != "running":
            raise errors.MigrationError(f"Could not resume {name} on the source: it is {state}.",
                                        hint=f"Inspect {self._work(name, 'src')} on the source host.")
        return {"state": state}

    def src_finish(self, name: str, service_ip: str) -> None:
        """The container lives elsewhere now: remove it here, but keep its published ports,
        which forward to it. The reply pins this host had for it as a destination go: replies
        that come back here now belong to this host's own forwarded clients."""
        self.net.unpin_replies(service_ip)
        self.runtime.remove(name)
        self.net.delete_container_netns(name)
        shutil.rmtree(self._mig_dir(name), ignore_errors=True)
        self._manifests.pop(name, None)

    # ------------------------------------------------------------------ destination
    def dst_prepare(self, name: str, image: str, command: list[str], env: dict[str, str],
                    service_ip: str, memory_limit_bytes: int | None = None) -> dict:
        if self.runtime.bundle(name).root.exists():
            raise errors.PreflightError(f"Container {name} already exists on the destination.")
        # a host the container lived on before keeps forwarding to it until the switch
        netns_path = self.net.create_container_netns(name, service_ip, keep_route=True)
        # silent until the controller switches the network over: a restored copy that is
        # rolled back must never have said anything to a client
        self.net.lock_container(name)
        try:
            self.runtime.prepare(name, image=image, command=command, env=env, netns_path=netns_path,
                                 memory_limit_bytes=memory_limit_bytes, mount_now=False)
        except BaseException:
            self.net.delete_container_netns(name)
            raise
        shutil.rmtree(self._mig_dir(name), ignore_errors=True)
        self._images(name).mkdir(parents=True)
        return {"netns": netns_path}

    def dst_go_live(self, name: str, service_ip: str) -> None:
        self.net.route_service(service_ip, container=name)
        self.net.unlock_container(name)

    def dst_receive(self, name: str, what: str, bind_address: str) -> dict:
        dest = {"upper": self.runtime.bundle(name).upper, "images": self._images(name)}[what]
        rx = transfer.Receiver.start(dest, bind_address)
        self._receivers[(name, what)] = rx
        return {"port": rx.port, "token": rx.token}

    def dst_receive_wait(self, name: str, what: str) -> dict:
        rx = self._receivers.pop((name, what))
        return {"bytes": rx.wait()}

    def dst_restore_arm(self, name: str, mode: str, descriptors: list[str]) -> dict:
        """Before the freeze: start runc restore, which sets up and waits at its gate."""
        self._call_off_restore(name)
        self._restores[name] = checkpoint.Restore.start(
            self.runtime, name, self._images(name), self._work(name, "dst"),
            lazy_pages=mode == "postcopy", gated=True, descriptors=descriptors)
        return {}

    def _call_off_restore(self, name: str) -> None:
        r = self._restores.pop(name, None)
        if r is not None:
            r.abort()

    def dst_restore(self, name: str, mode: str, page_server: str = "", port: int = 0) -> dict:
        images, work = self._images(name), self._work(name, "dst")
        steps = Steps()
        armed = self._restores.pop(name, None)
        try:
            # (the transfers went into receivers opened before the freeze)
            with steps("receive"):
                self._wait_receiver(name, "upper")
                self._wait_receiver(name, "images")
            work.mkdir(parents=True, exist_ok=True)
            daemon = None
            if mode == "postcopy":    # it starts while the rootfs is mounted
                daemon = checkpoint.LazyPagesDaemon.spawn(images, work, page_server, port)
                self._lazy[name] = daemon
            with steps("mount"):
                self.runtime.mount(name)
                if armed is not None:
                    armed.bind_rootfs()
            if daemon is not None:
                with steps("lazy_daemon"):
                    daemon.wait_listening()
            r = armed or checkpoint.Restore.start(self.runtime, name, images, work,
                                                  lazy_pages=daemon is not None)
            r.go(steps)
            # without its page server the restored copy would fault forever (or read
            # zeros once the daemon gave up): the restore proves the daemon connected
            pid = r.finish(daemon, (page_server, port) if daemon else None, steps)
        except BaseException:
            if armed is not None:
                armed.abort()
            raise
        return {"pid": pid, "restore_ms": steps.total_ms, "steps_ms": steps.ms}

    def _wait_receiver(self, name: str, what: str) -> None:
        rx = self._receivers.pop((name, what), None)
        if rx is not None:
            rx.wait()

    def dst_lazy_progress(self, name: str) -> dict:
        daemon = self._lazy.get(name)
        if daemon is None:
            return {"done": True}
        return {"done": daemon.proc.poll() is not None, **daemon.stats()}

    def dst_wait_lazy(self, name: str, timeout_s: float | None = None) -> dict:
        daemon = self._lazy.get(name)
        if daemon is None:
            return {"rc": 0}
        try:
            rc = daemon.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"rc": None, **daemon.stats()}
        self._lazy.pop(name, None)
        stats = daemon.stats()
        shutil.rmtree(self._mig_dir(name), ignore_errors=True)
        return {"rc": rc, **stats}

    def dst_abort(self, name: str, service_ip: str) -> None:
        """Undo everything an incoming migration made here."""
        self._call_off_restore(name)
        gate.settle(self.runtime.bundle(name).criu_conf)
        daemon = self._lazy.pop(name, None)
        if daemon is not None:
            daemon.kill()
        # a previous agent's daemon and armed restore (runc with its criu: one process group;
        # this agent may have been restarted to clean up)
        # (runtime.remove below also takes what such a runc left: its criu-root, its state)
        checkpoint.kill_groups_mentioning(str(self._mig_dir(name)))
        for key in [k for k in self._receivers if k[0] == name]:
            self._receivers.pop(key).cancel()
        # (nothing was published here yet: that happens at the switch; published rules of
        # this container on this host are those of a forwarder, and stay)
        self.runtime.remove(name)
        self.net.delete_container_netns(name)
        self.net.unpin_replies(service_ip)
        rt.unmount_under(self._mig_dir(name))      # CRIU's cgroup yard, if a restore was killed
        shutil.rmtree(self._mig_dir(name), ignore_errors=True)


def _tree_rss(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants, in bytes."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for tid in Path(f"/proc/{p}/task").iterdir():
                children = (tid / "children").read_text().split()
                todo += [int(c) for c in children]
        except OSError:
            continue
    return total
