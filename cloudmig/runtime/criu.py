"""CRIU on this host: where it is, how runc is told to use it, and its failures in our words.

    argv = criu.runc_argv(runtime, "checkpoint", "--lazy-pages", ...)   # runc --criu <ours> ...
    raise criu.failure(errors.RestoreError, "CRIU could not restore the container",
                       [work / "restore.log", work / "runc-restore.log"], side="destination")
    criu.cpuinfo_dump(scratch_dir)       # -> bytes of cpuinfo.img, checked on the other host

Every message built from a CRIU or runc log comes from ``failure``: the action, the log's
error lines, and which file on which host holds the rest.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Sequence, TypeVar

from cloudmig import errors, paths
from cloudmig.runtime import mounts, procs
from cloudmig.runtime.runc import Runtime

log = logging.getLogger(__name__)

CRIU_LOG_LEVEL = "4"                 # the lazy-pages log at level 4 lets us count faults
KDAT_DIR = Path("/run/criu")         # CRIU's RUNDIR as cloudmig/bootstrap-host builds it
TMPFS_MAGIC = 0x01021994
CPUINFO_TIMEOUT_S = 30

E = TypeVar("E", bound=errors.CloudmigError)


def path() -> str:
    criu = paths.criu_binary()
    if not criu:
        raise errors.HostSetupError("CRIU is not installed on this host.",
                                    hint="Run `cloudmig doctor` there.")
    return criu


def runc_argv(runtime: Runtime, *args: str) -> list[str]:
    """``runc --root ... --criu <our criu> ARGS``."""
    return runtime.runc_argv("--criu", path(), *args)


def failure(cls: type[E], action: str, logs: Sequence[Path], side: str, fallback: str = "",
            hint: str = "") -> E:
    """``action`` failed: the error lines of the first log that has any, and where to look
    (or ``hint``, where the fix lies elsewhere)."""
    excerpt = next((text for text in map(procs.log_excerpt, logs) if text), "") or fallback or "no output"
    return cls(f"{action}: {excerpt}", hint=hint or f"See {logs[0]} on the {side} host.")


def cpuinfo_dump(scratch: Path) -> bytes:
    """This host's CPU features as CRIU records them (to check against another host)."""
    scratch.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([path(), "cpuinfo", "dump", "-D", str(scratch)], capture_output=True,
                         text=True, timeout=CPUINFO_TIMEOUT_S)
    if res.returncode != 0:
        raise errors.PreflightError(f"criu cpuinfo dump failed: {res.stderr.strip()}")
    return (scratch / "cpuinfo.img").read_bytes()


def cpuinfo_check(scratch: Path, image: bytes) -> str | None:
    """None if this host's CPU has every feature of ``image``; else CRIU's complaint."""
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "cpuinfo.img").write_bytes(image)
    res = subprocess.run([path(), "cpuinfo", "check", "-D", str(scratch)], capture_output=True,
                         text=True, timeout=CPUINFO_TIMEOUT_S)
    return None if res.returncode == 0 else (res.stderr or res.stdout).strip()[-500:]


def read_dump_stats(work: Path) -> dict:
    """CRIU's stats-dump image (pages scanned, written, lazy; freeze times), via pycriu.
    CRIU writes it into its working directory (runc's --work-path), not the images."""
    stats = work / "stats-dump"
    if not stats.exists():
        return {}
    try:
        import pycriu  # built from the same CRIU tree as the binary (cloudmig/bootstrap-host)
        with open(stats, "rb") as fh:
            img = pycriu.images.load(fh)
        return dict(img["entries"][0].get("dump", {}))
    except Exception as exc:  # stats are a report detail; a missing pycriu must not fail a migration
        log.warning("cannot read %s: %s", stats, exc)
        return {}


def ensure_kdat_cache() -> bool:
    """Keep a tmpfs on KDAT_DIR so CRIU can cache its kernel probe (bootstrap-host mounts it;
    this puts it back after a reboot). False if it could not."""
    try:
        KDAT_DIR.mkdir(parents=True, exist_ok=True)
        if _fs_type(KDAT_DIR) == TMPFS_MAGIC:
            return True
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "cloudmig-criu",
                        str(KDAT_DIR)], check=True, capture_output=True)
        return True
    except (OSError, subprocess.CalledProcessError) as exc:
        log.warning("no tmpfs for CRIU's kernel-feature cache on %s: %s", KDAT_DIR, exc)
        return False


def ensure_favordynmods() -> bool:
    """Cheap cgroup moves for CRIU's restore (see cloudmig/bootstrap-host, step cgroups); the
    bootstrap remounts, this puts it back after a reboot. False if it could not."""
    found = mounts.cgroup2_mount()
    if found is None or found[1]:
        return found is not None
    res = subprocess.run(["mount", "-o", "remount,favordynmods", found[0]], capture_output=True, text=True)
    if res.returncode != 0:
        log.warning("cgroup2 on %s cannot take favordynmods: %s", found[0], res.stderr.strip())
    return res.returncode == 0


def _fs_type(where: Path) -> int:
    out = subprocess.run(["stat", "-f", "-c", "%t", str(where)], capture_output=True, text=True)
    return int(out.stdout.strip() or "0", 16)
