"""Mounts on this host: reading mountinfo, binds, private unmounts, the cgroup layout CRIU sees.

    mounts.bind_mount(bundle.rootfs, criu_root)     # private: nothing propagates to peers
    mounts.unmount_under(migration_dir)             # what a killed CRIU left, deepest first
    mounts.cgroup2_mount()                          # ("/sys/fs/cgroup/unified", True)
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from cloudmig import errors

MOUNT_TIMEOUT_S = 60


def _mount(argv: list[str], what: str) -> None:
    res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=MOUNT_TIMEOUT_S)
    if res.returncode != 0:
        msg = (res.stderr or res.stdout).strip().splitlines()
        raise errors.ContainerError(f"{what} failed: {msg[-1] if msg else res.returncode}")


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


def fstype(path: Path) -> str | None:
    """The file system type of the mount at exactly ``path`` (None: not a mount point)."""
    target = str(path)
    found = [kind for mountpoint, kind, _ in mounts() if mountpoint == target]
    return found[-1] if found else None


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
    _mount(["mount", "--bind", "--make-private", str(source), str(target)],
           what=f"bind-mounting {source} on {target}")


def make_private(path: Path) -> None:
    if is_mounted(path):
        _mount(["mount", "--make-rprivate", str(path)], f"making {path} private")


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
