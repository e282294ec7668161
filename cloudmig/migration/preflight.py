"""Checks before a migration touches anything: refuse with the reason and the fix.

    preflight.check_memory("h2", src.memory("db"), dst.memory(), "postcopy")   # or PreflightError
"""

from __future__ import annotations

from cloudmig import errors
from cloudmig.agent.api import Memory
from cloudmig.control.containers import ports_in_use
from cloudmig.runtime.images import HOST_IMAGE

MODES = ("postcopy", "stopcopy")
NEEDS_SOFT_DIRTY = ("precopy", "hybrid")
MEMORY_HEADROOM = 1.2            # the destination needs the container's RSS times this, free
MEMORY_FLOOR_BYTES = 64 << 20    # and at least this much on top
MIN_DISK_BYTES = 32 << 20        # post-copy: CRIU's images of all but memory, and its logs


def check_mode(mode: str, src_doctor: list[dict]) -> None:
    """Refuse a mode cloudmig cannot run, saying why (``src_doctor``: the source's checks)."""
    if mode in MODES:
        return
    src_checks = {c["name"]: c for c in src_doctor}
    if mode in NEEDS_SOFT_DIRTY:
        sd = src_checks.get("soft-dirty", {})
        if sd.get("status") != "pass":
            raise errors.PreflightError(
                f"Mode {mode} needs soft-dirty page tracking, which this kernel lacks "
                f"({sd.get('detail', 'criu check --feature mem_dirty_track fails')}).",
                hint="Use --mode postcopy (the default) or stopcopy.")
        raise errors.PreflightError(f"Mode {mode} is not implemented yet.",
                                    hint="Use --mode postcopy (the default) or stopcopy.")
    raise errors.ConfigError(f"--mode {mode!r} is not one of {', '.join(MODES)}.")


def check_host_image(image: str, container: str, src: str, src_root: str, dst: str, dst_root: str) -> None:
    """The `host` image is the source machine's own root file system: it moves only to a host
    that runs on the same one (lab hosts do; another machine does not)."""
    if image == HOST_IMAGE and src_root != dst_root:
        raise errors.PreflightError(
            f"Container {container} runs the `host` image, which is {src}'s own root file system; "
            f"{dst} runs on another machine's, where its programs and files are not.",
            hint="Run the container from an image (`cloudmig run --image ...`) to move it between machines.")


def check_host(host: str, checks: list[dict], mode: str) -> dict[str, dict]:
    by_name = {c["name"]: c for c in checks}
    failed = [c for c in checks if c["status"] == "fail" and c["required"]]
    if failed:
        c = failed[0]
        raise errors.PreflightError(f"Host {host} is not ready: {c['name']}: {c['detail']}.",
                                    hint=(c.get("hint") or "") + f" Run `cloudmig doctor` on {host}.")
    return by_name


def check_memory(dst: str, src_mem: Memory, dst_mem: Memory, mode: str) -> None:
    need = int(src_mem.rss * MEMORY_HEADROOM) + MEMORY_FLOOR_BYTES
    if dst_mem.mem_available < need:
        raise errors.PreflightError(
            f"Host {dst} has {dst_mem.mem_available >> 20} MiB available; the container needs "
            f"about {need >> 20} MiB.", hint="Free memory there or pick another destination.")
    # where the destination keeps a migration's images and CRIU's files: a stop-and-copy image
    # holds the whole memory; post-copy's only the rest of the state, and logs
    disk = src_mem.rss + MEMORY_FLOOR_BYTES if mode == "stopcopy" else MIN_DISK_BYTES
    if dst_mem.disk_free < disk:
        raise errors.PreflightError(
            f"Host {dst} has {dst_mem.disk_free >> 20} MiB of free disk for migrations; "
            + (f"a stop-and-copy image of this container needs about {src_mem.rss >> 20} MiB."
               if mode == "stopcopy" else f"a post-copy migration needs at least {MIN_DISK_BYTES >> 20} MiB."),
            hint="Free disk space there or pick another destination.")


def check_ports(data, container, dst: str) -> None:
    used = ports_in_use(data, dst)
    # the container's own forwards on dst (it is coming back) do not count
    own = {(p.host_port, p.proto) for f in container.forwards if f.host == dst for p in f.ports}
    clash = (used - own) & {(p.host_port, p.proto) for p in container.ports}
    if clash:
        port, proto = sorted(clash)[0]
        raise errors.PreflightError(f"Port {port}/{proto} is already published on {dst} by another container.",
                                    hint="Free the port there or pick another destination.")
