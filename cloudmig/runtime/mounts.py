"""Mounts on this host: reading mountinfo, binds, private unmounts, the cgroup layout CRIU sees.

    mounts.bind_mount(bundle.rootfs, criu_root)     # private: nothing propagates to peers
    mounts.mount_overlay(lowerdirs, upper, work, rootfs)
    mounts.unmount_under(migration_dir)             # what a killed CRIU left, deepest first
    mounts.cgroup2_mount()                          # ("/sys/fs/cgroup/unified", True)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import time
from pathlib import Path

from cloudmig import errors

MOUNT_TIMEOUT_S = 60
# mount(2)'s flags (linux/mount.h)
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
# mount(2) copies at most a page of options; longer ones (many layers) go to mount(8), whose
# libmount from util-linux 2.39 on passes them one by one (fsconfig)
MOUNT_DATA_MAX = 4000

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _sys_mount(source: str | None, target: Path, fstype: str | None, flags: int, data: str | None,
               what: str) -> None:
    """mount(2) itself: the restore's mounts sit inside the freeze, and each mount(8) run
    (a fork and an exec) cost ~2 ms there."""
    enc = (lambda v: v.encode() if v is not None else None)
    if _libc.mount(enc(source), str(target).encode(), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise errors.ContainerError(f"{what} failed: {os.strerror(err)}")


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
    what = f"bind-mounting {source} on {target}"
    _sys_mount(str(source), target, None, MS_BIND, None, what)
    _sys_mount(None, target, None, MS_PRIVATE, None, what)


def make_private(path: Path) -> None:
    if is_mounted(path):
        _sys_mount(None, path, None, MS_PRIVATE | MS_REC, None, f"making {path} private")


def mount_overlay(lowerdirs: list[str], upper: Path, work: Path, target: Path) -> None:
    opts = f"lowerdir={':'.join(lowerdirs)},upperdir={upper},workdir={work}"
    what = "mounting the container's overlayfs root"
    if len(opts) <= MOUNT_DATA_MAX:
        _sys_mount("overlay", target, "overlay", 0, opts, what)
    else:
        _mount(["mount", "-t", "overlay", "overlay", "-o", opts, str(target)], what)


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
