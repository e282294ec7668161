"""Containers across hosts: validate, allocate, ask the host's agent, record.

    containers.run(host="h1", name="web", image="host", command=[...], publish=["8080"], env=[])
    containers.remove("web")

Bad input (unknown host, duplicate name, port already published, malformed --publish or
--env, an image that cannot be found or pulled) is refused before anything changes; a failure
on the host leaves nothing behind. The image is resolved here, on the controller, into
layers (cloudmig.runtime.images); the host is sent those it lacks (cloudmig.control.layers)
and builds the container from their digests, which the record keeps for migrations.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

from cloudmig import errors, paths
from cloudmig.agent import dial
from cloudmig.control import layers as layer_shipping
from cloudmig.runtime import images
from cloudmig.inventory import ContainerRecord, Inventory, PortMapping
from cloudmig.network import addressing

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,30}$")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}$")
PUBLISH_RE = re.compile(r"^(\d{1,5})(?::(\d{1,5}))?(?:/(tcp|udp))?$")


def parse_publish(items: list[str]) -> list[PortMapping]:
    mappings = []
    for item in items:
        m = PUBLISH_RE.match(item)
        if not m:
            raise errors.ConfigError(f"--publish {item!r} is not PORT[:CONTAINER_PORT][/tcp|udp].")
        host_port = int(m.group(1))
        cport = int(m.group(2) or host_port)
        for p in (host_port, cport):
            if not 1 <= p <= 65535:
                raise errors.ConfigError(f"--publish {item!r}: port {p} is out of range 1-65535.")
        mappings.append(PortMapping(host_port=host_port, container_port=cport, proto=m.group(3) or "tcp"))
    seen = set()
    for mp in mappings:
        if (mp.host_port, mp.proto) in seen:
            raise errors.ConfigError(f"Port {mp.host_port}/{mp.proto} is given twice in --publish.")
        seen.add((mp.host_port, mp.proto))
    return mappings


def parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise errors.ConfigError(f"--env {item!r} is not KEY=VALUE.")
        env[key] = value
    return env


def ports_in_use(data, host: str) -> set[tuple[int, str]]:
    """Ports answered on ``host``'s public address: its containers' and its forwards'."""
    used = set()
    for c in data.containers.values():
        if c.host == host:
            used |= {(p.host_port, p.proto) for p in c.ports}
        for fwd in c.forwards:
            if fwd.host == host:
                used |= {(p.host_port, p.proto) for p in fwd.ports}
    return used


MIN_MEMORY_LIMIT_BYTES = 8 << 20     # below this runc and the container's shell cannot start


def parse_labels(items: list[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not LABEL_RE.match(key) or not LABEL_RE.match(value):
            raise errors.ConfigError(f"--label {item!r} is not KEY=VALUE (letters, digits, '.', '_', '-', '/').")
        labels[key] = value
    return labels


def run(*, host: str, name: str, image: str, command: list[str], publish: list[str],
        env: list[str], memory_limit_bytes: int | None = None, labels: list[str] | None = None,
        inv: Inventory | None = None,
        progress: layer_shipping.Progress | None = None) -> ContainerRecord:
    """Run a container; ``progress`` hears about layers being sent to the host."""
    inv = inv or Inventory()
    if not NAME_RE.match(name):
        raise errors.ConfigError(f"Container name {name!r} must be 1-31 lowercase letters, digits, "
                                 "'.', '_' or '-'.")
    if not command:
        raise errors.ConfigError("No command given.", hint="Put it after `--`: cloudmig run h1 web -- CMD ARGS")
    if memory_limit_bytes is not None and memory_limit_bytes < MIN_MEMORY_LIMIT_BYTES:
        raise errors.ConfigError(f"A memory limit of {memory_limit_bytes / 2**20:g} MiB is too small; the "
                                 f"least is {MIN_MEMORY_LIMIT_BYTES >> 20} MiB.",
                                 hint="Pass --memory-mib with a larger number, or leave it out for no limit.")
    ports = parse_publish(publish)
    env_map = parse_env(env)
    label_map = parse_labels(labels or [])
    with inv.transaction() as data:
        hrec = data.host(host)
        if hrec.state != "ready":
            raise errors.ConfigError(f"Host {host} is {hrec.state}, not ready.")
        if name in data.containers:
            raise errors.ConfigError(f"A container named {name!r} already exists (on "
                                     f"{data.containers[name].host}).", hint="Pick another name, or `cloudmig rm` it.")
        clash = ports_in_use(data, host) & {(p.host_port, p.proto) for p in ports}
        if clash:
            port, proto = sorted(clash)[0]
            raise errors.ConfigError(f"Port {port}/{proto} is already published on host {host}.",
                                     hint="Choose another --publish port.")
        used_ips = {c.service_ip for c in data.containers.values()}
        service_ip = str(addressing.service_ip(used_ips))
        record = ContainerRecord(name=name, host=host, service_ip=service_ip, image=image,
                                 command=command, env=env_map, ports=ports, state="creating",
                                 memory_limit_bytes=memory_limit_bytes, labels=label_map,
                                 created_at=time.time())
        data.containers[name] = record  # reserves the name, IP and ports
    try:
        with tempfile.TemporaryDirectory(prefix="image-", dir=_image_work_root()) as work:
            found = images.resolve(image, Path(work))    # bad image: nothing on the host yet
            digests = [layer.digest for layer in found]
            with dial.connect(hrec) as agent:
                layer_shipping.ship(agent, host, found, progress)
                agent.call("container.run", name=name, image=image, command=command, env=env_map,
                           service_ip=service_ip, public_ip=hrec.public_address,
                           ports=[p.model_dump() for p in ports], memory_limit_bytes=memory_limit_bytes,
                           layers=digests)
    except errors.ContainerExited as exc:
        # kept, stopped, with its output, until `cloudmig rm`: its logs say why it ended
        with inv.transaction() as data:
            data.containers[name].state = "exited"
            data.containers[name].layers = digests
        exc.hint = f"Its output stays readable with `cloudmig logs {name}` until `cloudmig rm {name}`."
        raise
    except BaseException:
        with inv.transaction() as data:
            data.containers.pop(name, None)
        raise
    with inv.transaction() as data:
        data.containers[name].state = "running"
        data.containers[name].layers = digests
        record = data.containers[name]
    return record


def _image_work_root() -> Path:
    """Where images are unpacked or pulled on the controller while a `run` sends them: the
    state directory (on disk: /tmp may be a small tmpfs)."""
    return paths.ensure_private_dir(paths.state_dir() / "tmp")


def states(inv: Inventory | None = None) -> list[dict]:
    """Every container with its live state as its host's agent reports it."""
    inv = inv or Inventory()
    data = inv.read()
    live: dict[str, dict[str, dict]] = {}
    for hname in {c.host for c in data.containers.values()}:
        try:
            with dial.connect(data.host(hname)) as agent:
                live[hname] = {c["name"]: c for c in agent.call("container.list")}
        except errors.CloudmigError:
            live[hname] = {}
    out = []
    for c in sorted(data.containers.values(), key=lambda c: c.name):
        st = live.get(c.host, {}).get(c.name, {})
        hrec = data.hosts.get(c.host)
        endpoints = [f"{hrec.public_address}:{p.host_port}/{p.proto}" for p in c.ports] if hrec else []
        for fwd in c.forwards:
            fh = data.hosts.get(fwd.host)
            if fh:
                endpoints += [f"{fh.public_address}:{p.host_port}/{p.proto} (forwarded)" for p in fwd.ports]
        out.append({"name": c.name, "host": c.host, "service_ip": c.service_ip, "image": c.image,
                    "endpoints": endpoints,
                    "state": "lost" if c.state == "lost" else st.get("status", "unknown"),
                    "pid": st.get("pid", 0), "command": c.command, "labels": c.labels,
                    "forwards": [f.model_dump() for f in c.forwards]})
    return out


def logs(name: str, inv: Inventory | None = None) -> str:
    inv = inv or Inventory()
    data = inv.read()
    c = data.container(name)
    with dial.connect(data.host(c.host)) as agent:
        return agent.call("container.logs", name=name)


def remove(name: str, inv: Inventory | None = None) -> None:
    inv = inv or Inventory()
    data = inv.read()
    c = data.container(name)
    with dial.connect(data.host(c.host)) as agent:
        agent.call("container.remove", name=name)
    for fwd in c.forwards:
        with dial.connect(data.host(fwd.host)) as agent:
            agent.call("net.unpublish", owner=name)
    with inv.transaction() as data:
        data.containers.pop(name, None)
