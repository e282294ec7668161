"""Containers on this host: bundle, overlayfs root, runc. Used by the agent.

    rt = Runtime(host_dir=Path("/var/lib/cloudmig/hosts/h1"), cgroup_parent="/cloudmig/h1")
    bundle = rt.prepare("web", image="host", command=[...], env={}, netns_path=...)
    rt.start(bundle)
    rt.state("web")                       # {"status": "running", "pid": ...}
    rt.remove("web")

Layout of one container: ``<host_dir>/containers/NAME/{upper,work,rootfs,config.json,meta.json}``;
``rootfs`` is an overlayfs of the image layers (lower) and ``upper`` (the writable layer).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from cloudmig import errors, paths
from cloudmig.runtime import images, layer_store, mounts, spec

log = logging.getLogger(__name__)

RUNC_TIMEOUT_S = 120
START_SETTLE_S = 0.3          # a command that cannot start dies within this; we look after it
START_POLL_S = 0.05
FREEZE_TIMEOUT_S = 10
FREEZE_POLL_S = 0.001


class Bundle:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.upper = root / "upper"
        self.work = root / "work"
        self.rootfs = root / "rootfs"
        self.config = root / "config.json"
        self.meta = root / "meta.json"
        self.criu_conf = root / "criu.conf"     # CRIU's options (the org.criu.config annotation)
        self.masked_empty = root / "masked"     # what masked directories show after a restore

    @property
    def name(self) -> str:
        return self.root.name


def _run(argv: list[str], *, timeout: float = RUNC_TIMEOUT_S, check: bool = True,
         what: str = "") -> subprocess.CompletedProcess:
    res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=timeout)
    if check and res.returncode != 0:
        msg = (res.stderr or res.stdout).strip().splitlines()
        raise errors.ContainerError(f"{what or argv[0]} failed: {msg[-1] if msg else res.returncode}")
    return res


def mount_overlay(lowerdirs: list[str], bundle: Bundle) -> None:
    for d in (bundle.upper, bundle.work, bundle.rootfs):
        d.mkdir(parents=True, exist_ok=True)
    if mounts.is_mounted(bundle.rootfs):
        return
    mounts.mount_overlay(lowerdirs, bundle.upper, bundle.work, bundle.rootfs)


def find_in_rootfs(rootfs: Path, command: str, path_env: str) -> bool:
    """Does ``command`` resolve to an executable inside ``rootfs`` (following its PATH)?"""
    candidates = [command] if "/" in command else [f"{d}/{command}" for d in path_env.split(":") if d]
    for cand in candidates:
        p = rootfs / cand.lstrip("/")
        # resolve symlinks relative to the container root, not the host's
        for _ in range(16):
            if p.is_symlink():
                target = os.readlink(p)
                p = (rootfs / target.lstrip("/")) if target.startswith("/") else (p.parent / target)
                continue
            break
        if p.is_file() and os.access(p, os.X_OK):
            return True
    return False


class Runtime:
    def __init__(self, host_dir: Path, cgroup_parent: str) -> None:
        self.host_dir = host_dir
        self.cgroup_parent = cgroup_parent
        self.runc_root = host_dir / "runc"
        self.containers_dir = host_dir / "containers"
        self.layer_store = host_dir / "layers"

    # ------------------------------------------------------------------ helpers
    def bundle(self, name: str) -> Bundle:
        return Bundle(self.containers_dir / name)

    def runc_argv(self, *args: str) -> list[str]:
        """``runc --root <this host's runc state> ARGS`` (for callers that run it themselves)."""
        runc = paths.tool("runc")
        if not runc:
            raise errors.HostSetupError("runc is not installed on this host.",
                                        hint="Run `cloudmig doctor` there.")
        return [runc, "--root", str(self.runc_root), *args]

    def runc(self, *args: str, check: bool = True, timeout: float = RUNC_TIMEOUT_S,
             what: str = "") -> subprocess.CompletedProcess:
        return _run(self.runc_argv(*args), check=check, timeout=timeout,
                    what=what or f"runc {args[0]}")

    def cgroups_path(self, name: str) -> str:
        return f"{self.cgroup_parent}/{name}"

    # ------------------------------------------------------------------ lifecycle
    def prepare(self, name: str, *, image: str, command: list[str], env: dict[str, str],
                netns_path: str, memory_limit_bytes: int | None = None,
                mount_now: bool = True, layers: list[str] | None = None) -> Bundle:
        """Make the bundle and (unless ``mount_now`` is False: an incoming migration, whose
        writable layer arrives first) mount its root and check the command exists.

        The root's read-only part is the image ``layers`` (digests, bottom first), which
        must be in this host's layer store already; with no layers, ``image`` must be
        ``host`` (this host's own root). ``image`` is otherwise only a name for messages:
        a host never opens a path the user gave."""
        b = self.bundle(name)
        if b.root.exists():
            raise errors.ContainerError(f"Container {name!r} already exists on this host.")
        if not command:
            raise errors.ConfigError("No command given for the container.")
        paths.ensure_private_dir(self.containers_dir)
        b.root.mkdir()
        try:
            lowerdirs = self.lowerdirs(image, layers or [])
            b.masked_empty.mkdir(mode=0o555, exist_ok=True)
            b.criu_conf.write_text(spec.criu_config(str(b.masked_empty), mounts.cgroup_yard()))
            config = spec.runtime_config(name=name, rootfs=str(b.rootfs), command=command, env=env,
                                         netns_path=netns_path, cgroups_path=self.cgroups_path(name),
                                         memory_limit_bytes=memory_limit_bytes,
                                         criu_config=str(b.criu_conf),
                                         masked_empty_dir=str(b.masked_empty))
            b.config.write_text(json.dumps(config, indent=2))
            b.meta.write_text(json.dumps({"image": image, "layers": layers or [], "lowerdirs": lowerdirs,
                                          "command": command, "env": env}))
            for d in (b.upper, b.work, b.rootfs):
                d.mkdir(parents=True, exist_ok=True)
            if mount_now:
                self.mount(name)
                self._check_command(b, image, command, env)
        except BaseException:
            self.discard(name)
            raise
        return b

    def lowerdirs(self, image: str, layers: list[str]) -> list[str]:
        """overlayfs's lower directories (top first) for an image's layers."""
        if layers:
            return layer_store.LayerStore(self.layer_store).lowerdirs(layers, image=image)
        if image == images.HOST_IMAGE:
            return ["/"]
        raise errors.ContainerError(
            f"Image {image!r} came without its layers: a host builds a container's root only "
            "from layers it was sent, never from a path.",
            hint="Run the container with `cloudmig run`, which sends them.")

    def mount(self, name: str) -> None:
        b = self.bundle(name)
        mount_overlay(json.loads(b.meta.read_text())["lowerdirs"], b)

    @staticmethod
    def _check_command(b: Bundle, image: str, command: list[str], env: dict[str, str]) -> None:
        path_env = env.get("PATH", spec.DEFAULT_PATH)
        if not find_in_rootfs(b.rootfs, command[0], path_env):
            raise errors.ContainerError(f"Command {command[0]!r} does not exist in image {image!r}.",
                                        hint="Check the spelling, or install it in the image.")
        if not find_in_rootfs(b.rootfs, "/bin/sh", path_env):
            raise errors.ContainerError(
                f"Image {image!r} has no /bin/sh, which cloudmig uses to give the container "
                "stdio that can be checkpointed.")

    def start(self, name: str) -> int:
        b = self.bundle(name)
        self.runc("run", "--detach", "--bundle", str(b.root), name, what="starting the container")
        # A command that exits at once (bad arguments, missing library) is an error of `run`.
        deadline = time.monotonic() + START_SETTLE_S
        while time.monotonic() < deadline:
            time.sleep(START_POLL_S)
            st = self.state(name)
            if st["status"] != "running":
                log_tail = self.logs(name, tail_lines=5)
                raise errors.ContainerExited(
                    f"Container {name!r} exited right after it started."
                    + (f" Its output ends with: {log_tail.strip()}" if log_tail.strip() else ""))
        return int(self.state(name)["pid"])

    def external_descriptors(self, name: str) -> list[str]:
        """The paths runc recorded for the container's stdio (its descriptors.json at a dump)."""
        try:
            state = json.loads((self.runc_root / name / "state.json").read_text())
        except (OSError, ValueError) as exc:
            raise errors.ContainerError(f"Container {name} has no runc state here ({exc}).") from exc
        return list(state.get("external_descriptors") or [])

    def state(self, name: str) -> dict:
        res = self.runc("state", name, check=False)
        if res.returncode != 0:
            return {"status": "absent", "pid": 0}
        data = json.loads(res.stdout)
        return {"status": data.get("status", "unknown"), "pid": data.get("pid", 0)}

    def list(self) -> list[str]:
        if not self.containers_dir.exists():
            return []
        return sorted(p.name for p in self.containers_dir.iterdir() if p.is_dir())

    def logs(self, name: str, tail_lines: int | None = None) -> str:
        log_path = self.bundle(name).upper / spec.STDIO_LOG.lstrip("/")
        if not log_path.exists():
            return ""
        text = log_path.read_text(errors="replace")
        if tail_lines is not None:
            text = "\n".join(text.splitlines()[-tail_lines:])
        return text

    def freezer_file(self, name: str) -> Path | None:
        """The file that freezes the container's cgroup (v1 freezer.state, v2 cgroup.freeze)."""
        v2 = Path("/sys/fs/cgroup") / self.cgroups_path(name).lstrip("/") / "cgroup.freeze"
        v1 = Path("/sys/fs/cgroup/freezer") / self.cgroups_path(name).lstrip("/") / "freezer.state"
        return v1 if v1.exists() else (v2 if v2.exists() else None)

    def pids(self, name: str) -> list[int]:
        """The container's processes, in this host's PID namespace (its cgroup's)."""
        f = self.freezer_file(name)
        if f is None:
            return []
        try:
            return [int(x) for x in (f.parent / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def freeze(self, name: str, timeout_s: float = FREEZE_TIMEOUT_S) -> bool:
        """Freeze the container's cgroup now, polling finely (CRIU, freezing it itself, sleeps
        100 ms before its first look). False if there is no freezer to use."""
        f = self.freezer_file(name)
        if f is None:
            return False
        v1 = f.name == "freezer.state"
        f.write_text("FROZEN" if v1 else "1")
        events = f.parent / "cgroup.events"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (f.read_text().strip() == "FROZEN") if v1 else ("frozen 1" in events.read_text()):
                return True
            time.sleep(FREEZE_POLL_S)
        f.write_text("THAWED" if v1 else "0")
        raise errors.CheckpointError(f"Container {name} did not freeze within {timeout_s} s.")

    def stop(self, name: str) -> None:
        """Kill and delete the runc container (the bundle stays)."""
        if self.state(name)["status"] == "absent":
            return
        self.runc("kill", name, "KILL", check=False)
        self.runc("delete", "--force", name, check=False)

    def discard(self, name: str) -> None:
        """Remove the bundle: unmount its root and delete its directory."""
        b = self.bundle(name)
        mounts.unmount(b.rootfs)
        shutil.rmtree(b.root, ignore_errors=True)

    def remove(self, name: str) -> None:
        self.stop(name)
        self.discard(name)
        # what runc's restore mounted for CRIU, if a restore was abandoned half-way
        mounts.unmount_under(self.runc_root / name)
        shutil.rmtree(self.runc_root / name, ignore_errors=True)
