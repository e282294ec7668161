"""A copy of each process's smaps taken before the freeze, which CRIU's dump reads instead of
/proc/PID/smaps while the process's mappings are the ones the copy lists (post-copy).

CRIU learns each mapping's flags (``VmFlags``: locked, don't-fork, huge pages, ...) from
/proc/PID/smaps, the only file that has them. But smaps also counts every mapping's resident
pages, and the kernel walks every page table entry to do it: at 1 GiB, 10-16 ms of the freeze,
21-32 ms while the process writes (docs/benchmarks.md). /proc/PID/maps lists the same mappings
without the walk. So while the container still runs, the source keeps each process's maps
lines and VmFlags; inside the freeze, CRIU's dump (cloudmig's patch, ``CLOUDMIG_SMAPS_AHEAD``)
reads /proc/PID/maps, and if it lists exactly the mappings of the copy, takes the flags from
the copy. Otherwise it reads smaps, as before.

A mapping's flags can change without changing its maps line (madvise or mlock on the whole
of it). So once CRIU has dumped (the container is frozen: its flags are those the dump saw,
and CRIU's parasite, which a walk would hold up, is gone), the source reads smaps again, and
CRIU's log says whose flags it took from a copy; ``check`` says whether any of those changed.
The verdict goes to the destination, whose restore awaits it before it unlocks the container:
a stale flag fails the restore, and the migration rolls back (the container runs on where it
was). The walk overlaps the images' transfer and the restore, not the freeze's critical path.

    taken = smaps_ahead.take(pids, where)   # running; CRIU's dump started with env(where)
    seen = smaps_ahead.look(where)          # frozen, after CRIU's dump
    smaps_ahead.check(seen, smaps_ahead.used_in_log(dump_log))    # a stale flag: CheckpointError
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from cloudmig import errors

ENV = "CLOUDMIG_SMAPS_AHEAD"
VERDICT = "verdict.json"     # the check's outcome, as the source sends it to the destination
_HEADER = re.compile(rb"[0-9a-f]+-[0-9a-f]+ ")


@dataclasses.dataclass
class Checked:
    used: int          # processes whose flags CRIU took from the copy (all still right)
    read: int          # processes whose mappings had changed: CRIU read their smaps


def env(where: Path) -> dict[str, str]:
    """What CRIU's dump needs in its environment to look for the copies in ``where``."""
    return {ENV: str(where)}


def _kept(smaps: bytes) -> bytes:
    """The maps lines and the VmFlags lines: the mappings and their flags, nothing counted."""
    return b"".join(line for line in smaps.splitlines(keepends=True)
                    if _HEADER.match(line) or line.startswith(b"VmFlags: "))


def _smaps(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/smaps", "rb") as fh:
            return fh.read()
    except OSError:            # gone meanwhile
        return None


def take(pids: list[int], where: Path) -> int:
    """Keep each process's mappings and their flags in ``where/PID``. How many were kept."""
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    taken = 0
    for pid in pids:
        smaps = _smaps(pid)
        if smaps is None:
            continue
        fd = os.open(where / str(pid), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(_kept(smaps))
        taken += 1
    return taken


@dataclasses.dataclass
class Seen:
    """What smaps says with the container frozen, against the copies."""
    copies: int                          # processes with a copy
    changed: dict[int, str] = dataclasses.field(default_factory=dict)    # pid: its first changed flag


def _flags_by_mapping(kept: bytes) -> dict[bytes, bytes]:
    flags, mapping = {}, b""
    for line in kept.splitlines():
        if line.startswith(b"VmFlags: "):
            flags[mapping] = line
        else:
            mapping = line
    return flags


def look(where: Path) -> Seen:
    """Read each copied process's smaps again, with the container frozen (from the freeze on:
    its flags cannot change any more), and compare the flags of the copy's mappings (a
    mapping that is not in the copy, such as CRIU's parasite while it is there, is not looked
    at)."""
    entries = sorted(where.iterdir()) if where.is_dir() else []
    seen = Seen(copies=len(entries))
    for entry in entries:
        now = _smaps(int(entry.name))
        if now is None:
            continue
        then, now_flags = _flags_by_mapping(entry.read_bytes()), _flags_by_mapping(_kept(now))
        for mapping, flags in then.items():
            if mapping in now_flags and now_flags[mapping] != flags:
                seen.changed[int(entry.name)] = (f"mapping {mapping.split(b' ', 1)[0].decode()}, "
                                                 f"{flags[9:].decode().strip()} -> "
                                                 f"{now_flags[mapping][9:].decode().strip()}")
                break
    return seen


def used_in_log(log: str) -> set[int]:
    """The processes whose flags CRIU took from their copy, as its dump log says."""
    return {int(m) for m in re.findall(r"smaps of (\d+): VmFlags from the copy", log)}


def check(seen: Seen, used: set[int]) -> Checked:
    """Did every flag CRIU took from a copy (``used``) still hold at the freeze? A process
    whose mappings were not the copy's had its smaps read by CRIU itself."""
    stale = [f"process {pid}: {change}" for pid, change in sorted(seen.changed.items()) if pid in used]
    if stale:
        raise errors.CheckpointError(
            f"The container changed the flags of a memory mapping between the arm and the freeze "
            f"({'; '.join(stale)}): the dump would have restored the old ones.",
            hint="Nothing moved; the container runs on at the source. Run the migration again.")
    return Checked(used=len(used), read=seen.copies - len(used))
