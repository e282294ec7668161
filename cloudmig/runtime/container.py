"""Host-local container lifecycle: bundle, overlayfs root, runc. Used by the agent.

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
from cloudmig.runtime import images, spec

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


MOUNTINFO = "/proc/self/mountinfo"


def mounts(mountinfo: str = MOUNTINFO):
    """(mount point, fs type, superblock options) of each mount, from ``mountinfo`` (whose
    optional fields before the "-" vary in number)."""
    with open(mountinfo) as fh:
        for line in fh:
            fields = line.split()
            sep = fields.index("-")
            yield fields[4], fields[sep + 1], fields[sep + 3].split(",")


def is_mounted(path: Path) -> bool:
    target = str(path)
    return any(mountpoint == target for mountpoint, _, _ in mounts())


def log_excerpt(path: Path, lines: int = 3) -> str:
    """The last error lines of a log (or its last lines), joined on one line; "" if unreadable."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    errs = [line for line in text if "Error" in line or "error" in line]
    return " / ".join((errs or text)[-lines:])


def process_alive(pid: int) -> bool:
    """Does ``pid`` exist and is it neither a zombie nor dead?"""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(") ", 1)[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


def mount_overlay(lowerdirs: list[str], bundle: Bundle) -> None:
    for d in (bundle.upper, bundle.work, bundle.rootfs):
        d.mkdir(parents=True, exist_ok=True)
    if is_mounted(bundle.rootfs):
        return
    opts = f"lowerdir={':'.join(lowerdirs)},upperdir={bundle.upper},workdir={bundle.work}"
    _run(["mount", "-t", "overlay", "overlay", "-o", opts, str(bundle.rootfs)],
         what="mounting the container's overlayfs root")


CGROUP_ROOT = "/sys/fs/cgroup"


def cgroup_yard(mountinfo: str = MOUNTINFO) -> str | None:
    """CGROUP_ROOT if its mounts are laid out as CRIU's cgroup yard is (one directory per
    v1 hierarchy named by its controllers, or by its name= for named ones, and cgroup2 on
    ``unified``: Debian's hybrid layout), else None (CRIU then mounts a yard itself)."""
    found = False
    for mountpoint, fstype, opts in mounts(mountinfo):
        if fstype not in ("cgroup", "cgroup2"):
            continue
        parent, _, leaf = mountpoint.rpartition("/")
        if parent != CGROUP_ROOT:
            return None
        if fstype == "cgroup2":
            if leaf != "unified":
                return None
        else:
            named = [o[len("name="):] for o in opts if o.startswith("name=")]
            controllers = [o for o in opts if o in _V1_CONTROLLERS]
            if leaf != (named[0] if named else ",".join(controllers)):
                return None
        found = True
    return CGROUP_ROOT if found else None


def cgroup2_mount(mountinfo: str = MOUNTINFO) -> tuple[str, bool] | None:
    """(mount point, has favordynmods) of the first cgroup2 hierarchy, or None."""
    for mountpoint, fstype, opts in mounts(mountinfo):
        if fstype == "cgroup2":
            return mountpoint, "favordynmods" in opts
    return None


_V1_CONTROLLERS = {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "blkio",
                   "perf_event", "net_prio", "hugetlb", "pids", "rdma", "misc"}


def bind_mount(source: Path, target: Path) -> None:
    """Bind ``source`` on ``target``, privately: on hosts whose mounts are shared (systemd's
    default) neither this bind nor its later unmount may reach the peers, among them the
    container's own rootfs mount. Make what is already on ``target`` private first."""
    _run(["mount", "--bind", "--make-private", str(source), str(target)],
         what=f"bind-mounting {source} on {target}")


def make_private(path: Path) -> None:
    if is_mounted(path):
        _run(["mount", "--make-rprivate", str(path)], what=f"making {path} private")


def unmount_private(path: Path) -> None:
    """Unmount everything stacked on ``path``, none of it propagating anywhere."""
    for _ in range(8):
        if not is_mounted(path):
            return
        make_private(path)
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
    if is_mounted(path):
        raise errors.ContainerError(f"Cannot unmount {path}.")


def unmount(path: Path) -> None:
    for _ in range(5):
        if not is_mounted(path):
            return
        subprocess.run(["umount", str(path)], capture_output=True)
        if not is_mounted(path):
            return
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
        time.sleep(0.1)


def unmount_under(root: Path) -> None:
    """Unmount everything mounted below ``root``, deepest first (e.g. what a killed CRIU left)."""
    prefix = str(root).rstrip("/") + "/"
    targets = {mountpoint for mountpoint, _, _ in mounts() if mountpoint.startswith(prefix)}
    for target in sorted(targets, key=len, reverse=True):
        unmount(Path(target))


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
                mount_now: bool = True) -> Bundle:
        """Make the bundle and (unless ``mount_now`` is False: an incoming migration, whose
        writable layer arrives first) mount its root and check the command exists."""
        b = self.bundle(name)
        if b.root.exists():
            raise errors.ContainerError(f"Container {name!r} already exists on this host.")
        if not command:
            raise errors.ConfigError("No command given for the container.")
        paths.ensure_private_dir(self.containers_dir)
        b.root.mkdir()
        try:
            lowerdirs = images.resolve(image, self.layer_store)
            b.masked_empty.mkdir(mode=0o555, exist_ok=True)
            b.criu_conf.write_text(spec.criu_config(str(b.masked_empty), cgroup_yard()))
            config = spec.runtime_config(name=name, rootfs=str(b.rootfs), command=command, env=env,
                                         netns_path=netns_path, cgroups_path=self.cgroups_path(name),
                                         memory_limit_bytes=memory_limit_bytes,
                                         criu_config=str(b.criu_conf),
                                         masked_empty_dir=str(b.masked_empty))
            b.config.write_text(json.dumps(config, indent=2))
            b.meta.write_text(json.dumps({"image": image, "lowerdirs": lowerdirs,
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
                raise errors.ContainerError(
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
        unmount(b.rootfs)
        shutil.rmtree(b.root, ignore_errors=True)

    def remove(self, name: str) -> None:
        self.stop(name)
        self.discard(name)
        # what runc's restore mounted for CRIU, if a restore was abandoned half-way
        unmount_under(self.runc_root / name)
        shutil.rmtree(self.runc_root / name, ignore_errors=True)
