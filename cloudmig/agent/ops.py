"""What an agent can do on its host: the operations the controller may call.

    handlers = ops.AgentOps(host="h1", host_dir=Path(...), cgroup_parent="/cloudmig/cm-h1").handlers()
    handlers["container.run"](name="web", image="host", command=[...], ...)

Each operation is host-local (runc, CRIU, netlink, files) and returns plain JSON data.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import dataclasses
from pathlib import Path
from typing import Any, Callable

from cloudmig import __version__, doctor, errors
from cloudmig.agent import protocol
from cloudmig.agent import netops
from cloudmig.agent import layer_ops
from cloudmig.agent.migrations import Migrations
from cloudmig.agent.side import HostContext
from cloudmig.runtime import runc, transfer

log = logging.getLogger(__name__)


def root_id() -> str:
    """Which root file system this host runs on: its machine id and the device and inode of
    "/". Lab hosts (and machines adopted inside them) share this machine's; another machine's
    differs. The `host` image is this root, so it can only move between hosts that share it."""
    try:
        machine = Path("/etc/machine-id").read_text().strip()
    except OSError:
        machine = ""
    st = os.stat("/")
    return f"{machine}:{st.st_dev}:{st.st_ino}"


class AgentOps:
    def __init__(self, host: str, host_dir: Path, cgroup_parent: str, netns_prefix: str) -> None:
        self.host = host
        self.host_dir = host_dir
        self.runtime = runc.Runtime(host_dir, cgroup_parent)
        self.layers = layer_ops.LayerOps(self.runtime.layer_store)
        self.net = netops.NetOps(host=host, netns_prefix=netns_prefix, host_dir=host_dir)
        self.migrations = Migrations(HostContext(self.runtime, self.net))
        self._copies: dict[str, transfer.Receiver] = {}

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            **self.layers.handlers(),
            **self.migrations.handlers(),
            "ping": self.ping,
            "doctor": self.doctor,
            "container.run": self.container_run,
            "container.state": self.container_state,
            "container.list": self.container_list,
            "container.logs": self.container_logs,
            "container.remove": self.container_remove,
            "container.stop": self.container_stop,
            "container.send_upper": self.container_send_upper,
            "container.receive_copy": self.container_receive_copy,
            "container.receive_copy_wait": self.container_receive_copy_wait,
            "net.publish": self.net.publish,
            "net.unpublish": self.net.unpublish,
            "net.forwards": self.net.forwards,
            "net.route_service": self.net.route_service,
            "net.track_tunnel": self.net.track_tunnel,
            "net.connections": self.net.connections,
            "net.pin_replies": self.net.pin_replies,
            "net.unpin_replies": self.net.unpin_replies,
            "tunnel.key": self.net.tunnel_key,
            "tunnel.up": self.net.tunnel_up,
            "tunnel.warm": self.net.tunnel_warm,
            "tunnel.keepalive": self.net.tunnel_keepalive,
            "tunnel.status": self.net.tunnel_status,
            "tunnel.down": self.net.tunnel_down,
        }

    # ------------------------------------------------------------------ basics
    def ping(self) -> dict:
        return {"host": self.host, "protocol": protocol.PROTOCOL_VERSION, "version": __version__,
                "pid": os.getpid(), "kernel": platform.release(), "root_id": root_id()}

    def doctor(self) -> list[dict]:
        return [dataclasses.asdict(c) for c in doctor.run_checks()]

    # ------------------------------------------------------------------ containers
    def container_run(self, name: str, image: str, command: list[str], env: dict[str, str],
                      service_ip: str, public_ip: str, ports: list[dict],
                      memory_limit_bytes: int | None = None, layers: list[str] | None = None) -> dict:
        """Network namespace with the service IP, bundle, runc; all undone on failure, except
        when the command itself ended at once: its bundle and output stay until
        ``container.remove``, so that its logs can say why.
        ``layers``: the image's layer digests, bottom first, already in this host's store."""
        made_netns = False
        try:
            netns_path, _ = self.net.create_container_netns(name, service_ip)
            made_netns = True
            self.runtime.prepare(name, image=image, layers=layers, command=command, env=env,
                                 netns_path=netns_path, memory_limit_bytes=memory_limit_bytes)
            pid = self.runtime.start(name)
            for p in ports:
                self.net.publish(owner=name, public_ip=public_ip, host_port=p["host_port"],
                                 service_ip=service_ip, container_port=p["container_port"],
                                 proto=p.get("proto", "tcp"))
        except errors.ContainerExited:
            raise
        except BaseException:
            self.runtime.remove(name)
            self.net.unpublish(owner=name)
            if made_netns:
                self.net.delete_container_netns(name)
            raise
        return {"pid": pid, "netns": netns_path}

    def container_state(self, name: str) -> dict:
        return self.runtime.state(name)

    def container_list(self) -> list[dict]:
        return [{"name": n, **self.runtime.state(n)} for n in self.runtime.list()]

    def container_logs(self, name: str, tail_lines: int | None = None) -> str:
        if not self.runtime.bundle(name).root.exists():
            raise errors.ConfigError(f"No container {name!r} on host {self.host}.")
        return self.runtime.logs(name, tail_lines)

    def container_stop(self, name: str) -> None:
        """Kill the container; its bundle (writable layer, output) stays."""
        self.runtime.stop(name)

    def container_send_upper(self, name: str, address: str, port: int, token: str) -> int:
        """The container's writable layer, into a receiver on another host (through the tunnel)."""
        return transfer.send(self.runtime.bundle(name).upper, address, port, token)

    def _copy_dir(self, name: str) -> Path:
        return self.host_dir / "copies" / name

    def container_receive_copy(self, name: str, bind_address: str) -> dict:
        """Receive a copy of another host's container files, to measure the copy (the cold
        restart baseline); ``container.receive_copy_wait`` drops it once it arrived."""
        shutil.rmtree(self._copy_dir(name), ignore_errors=True)
        self._copy_dir(name).mkdir(parents=True)
        rx = transfer.Receiver.start(self._copy_dir(name), bind_address)
        self._copies[name] = rx
        return {"port": rx.port, "token": rx.token}

    def container_receive_copy_wait(self, name: str) -> int:
        rx = self._copies.pop(name, None)
        if rx is None:
            raise errors.ContainerError(f"No copy of {name} is being received on host {self.host}.")
        try:
            return rx.wait()
        finally:
            shutil.rmtree(self._copy_dir(name), ignore_errors=True)

    def container_remove(self, name: str) -> dict:
        self.runtime.remove(name)
        self.net.unpublish(owner=name)
        self.net.delete_container_netns(name)
        return {"removed": name}
