"""The pages a moved process will likely touch first, sent before the freeze (post-copy).

This kernel cannot say which pages a process used last (no idle-page tracking, no DAMON
``vaddr``: docs/platform.md), so the pages are guessed the way the lazy-pages daemon guesses
them over a WAN: the pages the words on the threads' stacks point to, and the pages their
words point to (two levels). Measured offline, those reach 17 of the first 21 pages a
restored Python server faults on (docs/benchmarks.md).

The source reads them while the container still runs and sends them before the freeze.
Inside the freeze, with the container frozen, it reads them again and sends only a verdict:
which are unchanged, and the new contents of those that changed. Before CRIU restores, the
destination makes them present pages of the dump's images (in a parent image set, see
below), so the restored process finds them in place instead of faulting on each through the
tunnel.

    hot = hot_pages.scan(pids)                   # running: {vpid: Pages}
    hot_pages.write(hot, outdir)                 # hot-<vpid>.pages, sent ahead
    hot_pages.write_verdicts(hot, images)        # frozen: hot-<vpid>.verdict, with the images
    ahead = hot_pages.load_ahead(there, parent)  # destination, before the freeze
    hot_pages.merge(images, ahead, parent)       # destination, before the restore

A page that cannot be read, or whose mapping went, is simply not installed: it arrives
lazily, like any other.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import dataclasses
import logging
import os
import struct
import time
from pathlib import Path

log = logging.getLogger(__name__)

PAGE = 4096
BUDGET_PAGES = 768            # ~3 MiB for the whole container: depth 2 from the stacks was 546 pages in the measurement
STACK_TOP_BYTES = 16 * 1024   # read from each thread's stack pointer up (as the CRIU patch does)
SP_TRIES = 50                 # looks at a busy thread's stack pointer (1 ms apart)
CHANGED_MAX = 128             # changed pages whose new contents go inside the freeze
PRESEND_MAGIC = b"CMHOTP01"
VERDICT_MAGIC = b"CMHOTV01"
PE_PARENT, PE_LAZY, PE_PRESENT = 1 << 0, 1 << 1, 1 << 2    # criu/include/pagemap.h


@dataclasses.dataclass
class Pages:
    pid: int                  # in this host's PID namespace
    vpid: int                 # in the container's: what CRIU's images are named after
    addrs: list[int]
    data: bytes               # PAGE bytes per address, in order


# ------------------------------------------------------------------ the source, running
def _ranges(pid: int) -> list[tuple[int, int]]:
    """Private, writable, anonymous mappings: what CRIU can move lazily."""
    out = []
    with open(f"/proc/{pid}/maps") as fh:
        for line in fh:
            parts = line.split()
            perms, inode = parts[1], parts[4]
            path = parts[5] if len(parts) > 5 else ""
            # not executable either: CRIU's injected code never lands in these pages
            if perms != "rw-p" or inode != "0" or path not in ("", "[heap]", "[stack]"):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi))
    return out


def _stack_pointers(pid: int) -> list[int]:
    """Each thread's stack pointer. The kernel tells it only while the thread waits in a
    system call: a busy thread is looked at again, up to SP_TRIES times, 1 ms apart."""
    sps, busy = [], os.listdir(f"/proc/{pid}/task")
    for attempt in range(SP_TRIES):
        if attempt:
            time.sleep(0.001)
        running = []
        for tid in busy:
            try:
                fields = Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()
            except OSError:
                continue                  # the thread ended
            if fields and fields[0] == "running":
                running.append(tid)
            elif len(fields) >= 3:
                sps.append(int(fields[-2], 16))
        busy = running
        if not busy:
            break
    return sps


def _vpid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return pid


IOV_MAX = 1024
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc.process_vm_readv.argtypes = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong,
                                   ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.c_ulong]
_libc.process_vm_readv.restype = ctypes.c_ssize_t


def read_pages(pid: int, addrs: list[int]) -> tuple[bytearray, bytearray]:
    """The pages at ``addrs`` of process ``pid``, back to back, with as few system calls as
    the kernel allows (one per IOV_MAX pages, and one more past each page that cannot be
    read): (contents, 1 for each page read, 0 for each that could not be)."""
    buf = bytearray(len(addrs) * PAGE)
    ok = bytearray(len(addrs))
    if not addrs:
        return buf, ok
    base = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
    at = 0
    while at < len(addrs):
        n = min(IOV_MAX, len(addrs) - at)
        local = (_Iovec * n)(*[_Iovec(base + (at + i) * PAGE, PAGE) for i in range(n)])
        remote = (_Iovec * n)(*[_Iovec(addrs[at + i], PAGE) for i in range(n)])
        got = _libc.process_vm_readv(pid, local, n, remote, n, 0)
        if got < 0 and ctypes.get_errno() in (1, 3):     # EPERM, ESRCH: nothing is readable
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        whole = max(got, 0) // PAGE
        ok[at:at + whole] = b"\1" * whole
        at += whole if whole == n else whole + 1          # past the page it stopped at
    return buf, ok


def _pointed_pages(buf: bytes | bytearray, ranges: list[tuple[int, int]], starts: list[int]) -> list[int]:
    lo, hi = ranges[0][0], ranges[-1][1]
    found = []
    for (word,) in struct.iter_unpack("<Q", buf):
        if lo <= word < hi:
            i = bisect.bisect_right(starts, word) - 1
            if i >= 0 and word < ranges[i][1]:
                found.append(word & ~(PAGE - 1))
    return found


def scan_process(pid: int, budget: int = BUDGET_PAGES) -> Pages:
    """Follow the words of ``pid``'s stack tops two levels deep, at most ``budget`` pages."""
    ranges = _ranges(pid)
    pages = Pages(pid=pid, vpid=_vpid(pid), addrs=[], data=b"")
    if not ranges:
        return pages
    starts = [r[0] for r in ranges]
    chunks: list[bytes] = []
    seen: set[int] = set()
    frontier = []
    for sp in _stack_pointers(pid):
        base = sp & ~(PAGE - 1)
        i = bisect.bisect_right(starts, base) - 1
        end = min(base + STACK_TOP_BYTES, ranges[i][1]) if i >= 0 and base < ranges[i][1] else base + PAGE
        top = list(range(base, end, PAGE))
        seen.update(top)                 # the dump keeps the stack tops in its images
        data, readable = read_pages(pid, top)
        for k in range(len(top)):
            if readable[k]:
                frontier.extend(_pointed_pages(data[k * PAGE:(k + 1) * PAGE], ranges, starts))
    for depth in (1, 2):
        level = []
        for page in frontier:
            if page not in seen and len(pages.addrs) + len(level) < budget:
                seen.add(page)
                level.append(page)
        data, readable = read_pages(pid, level)
        frontier = []
        for i, page in enumerate(level):
            if readable[i]:
                pages.addrs.append(page)
                chunks.append(bytes(data[i * PAGE:(i + 1) * PAGE]))
                if depth == 1:
                    frontier.extend(_pointed_pages(chunks[-1], ranges, starts))
    pages.data = b"".join(chunks)
    return pages


def scan(pids: list[int], budget: int = BUDGET_PAGES) -> dict[int, Pages]:
    """The hot pages of ``pids`` (a container's processes, in the cgroup's order), at most
    ``budget`` in all: a container of many processes does not send many times as much. A
    process that went or cannot be read is left out."""
    hot = {}
    for pid in pids:
        left = budget - sum(len(p.addrs) for p in hot.values())
        if left <= 0:
            break
        try:
            p = scan_process(pid, left)
        except (OSError, ValueError) as exc:
            log.info("hot pages of pid %d not read: %s", pid, exc)
            continue
        if p.addrs:
            hot[p.vpid] = p
    return hot


def _private_file(path: Path, data: bytes | list) -> None:
    """Memory of the container: readable by root only. ``data``: bytes, or a list of
    buffers written one after the other."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        if isinstance(data, list):
            fh.writelines(data)
        else:
            fh.write(data)


def write(hot: dict[int, Pages], outdir: Path) -> int:
    """``hot-<vpid>.pages`` for each process into ``outdir``; the bytes written."""
    outdir.mkdir(parents=True, exist_ok=True)
    total = 0
    for vpid, p in hot.items():
        blob = (PRESEND_MAGIC + struct.pack("<I", len(p.addrs)) + struct.pack(f"<{len(p.addrs)}Q", *p.addrs)
                + p.data)
        _private_file(outdir / f"hot-{vpid}.pages", blob)
        total += len(blob)
    return total


# ------------------------------------------------------------------ the source, frozen
@dataclasses.dataclass
class Verdict:
    unchanged: int = 0
    changed: int = 0          # new contents sent with the verdict
    dropped: int = 0          # unreadable now, or changed past CHANGED_MAX: they come lazily


def write_verdicts(hot: dict[int, Pages], images: Path) -> Verdict:
    """Read the pages sent ahead again (the container frozen) and write, per process,
    ``hot-<vpid>.verdict`` into ``images``: one byte per page (1: unchanged), then the
    addresses and new contents of those that changed."""
    total = Verdict()
    for vpid, p in hot.items():
        flags = bytearray(len(p.addrs))
        changed_addrs, changed_data = [], []
        try:
            now, readable = read_pages(p.pid, p.addrs)
        except OSError:
            now, readable = bytearray(), bytearray(len(p.addrs))
        for i, addr in enumerate(p.addrs):
            # slices of bytes compare with memcmp (memoryviews compare item by item: 7x slower)
            if not readable[i]:
                total.dropped += 1
            elif now[i * PAGE:(i + 1) * PAGE] == p.data[i * PAGE:(i + 1) * PAGE]:
                flags[i] = 1
                total.unchanged += 1
            elif len(changed_addrs) < CHANGED_MAX:
                changed_addrs.append(addr)
                changed_data.append(now[i * PAGE:(i + 1) * PAGE])
                total.changed += 1
            else:
                total.dropped += 1
        blob = (VERDICT_MAGIC + struct.pack("<II", len(flags), len(changed_addrs)) + bytes(flags)
                + struct.pack(f"<{len(changed_addrs)}Q", *changed_addrs) + b"".join(changed_data))
        _private_file(images / f"hot-{vpid}.verdict", blob)
    return total


# ------------------------------------------------------------------ the destination
# The pages sent ahead become a parent image set, as CRIU's pre-dumps make (pagemap and
# pages images in the directory the link ``parent`` in the images names): built before the
# freeze, so that inside it only the dump's pagemap is rewritten, its entries for those
# pages marked "in the parent", and the few changed pages are written over their old copies.
IMG_MAGICS = struct.pack("<II", 0x54564319, 0x56084025)   # IMG_COMMON, PAGEMAP (criu/include/magic.h)
PARENT_LINK = "parent"                                    # CR_PARENT_LINK


@dataclasses.dataclass
class Ahead:
    """One process's pages sent ahead, written as a parent image set."""
    vpid: int
    sent: list[int]           # addresses in the order sent (the verdict's order)
    index: dict[int, int]     # address -> its page's index in the parent's pages image
    pages: Path               # that image


def pb():
    """pycriu's protobuf classes (built from the same CRIU tree as the binary). Imported on
    first use (~10 ms): ``load_ahead``, before the freeze, is the first."""
    from pycriu.images import pb as classes
    return classes


def _entry(vaddr: int, nr: int, flags: int):
    e = pb().pagemap_entry()
    e.vaddr, e.compat_nr_pages, e.nr_pages, e.flags = vaddr, 0, nr, flags   # compat: required, unused
    return e


def load_ahead(presend: Path, parent: Path) -> dict[int, Ahead]:
    """Before the freeze: the pages sent ahead into ``presend`` become the parent image set
    ``parent`` (one pagemap and pages image per process), by vpid."""
    parent.mkdir(parents=True, exist_ok=True)
    ahead = {}
    for path in sorted(presend.glob("hot-*.pages")):
        vpid = int(path.name[len("hot-"):-len(".pages")])
        blob = path.read_bytes()
        if blob[:8] != PRESEND_MAGIC:
            raise ValueError(f"{path.name}: not a hot-pages file")
        (n,) = struct.unpack_from("<I", blob, 8)
        sent = list(struct.unpack_from(f"<{n}Q", blob, 12))
        data = memoryview(blob)[12 + 8 * n:]
        if len(data) != n * PAGE or len(set(sent)) != n:
            raise ValueError(f"{path.name}: malformed")
        order = sorted(range(n), key=sent.__getitem__)
        head = pb().pagemap_head()
        head.pages_id = vpid
        entries = [_entry(first, count, PE_PRESENT) for first, count in _runs([sent[i] for i in order])]
        pages = parent / f"pages-{vpid}.img"
        _private_file(pages, [data[i * PAGE:(i + 1) * PAGE] for i in order])
        _private_file(parent / f"pagemap-{vpid}.img", _pagemap_bytes(IMG_MAGICS, head, entries))
        ahead[vpid] = Ahead(vpid=vpid, sent=sent, index={sent[i]: k for k, i in enumerate(order)}, pages=pages)
    return ahead


def _read_verdict(path: Path, n_sent: int) -> tuple[bytes, dict[int, memoryview]]:
    blob = path.read_bytes()
    if blob[:8] != VERDICT_MAGIC:
        raise ValueError(f"{path.name}: not a hot-pages verdict")
    n, m = struct.unpack_from("<II", blob, 8)
    if n != n_sent:
        raise ValueError(f"{path.name}: {n} pages judged, {n_sent} sent")
    flags = blob[16:16 + n]
    addrs = struct.unpack_from(f"<{m}Q", blob, 16 + n)
    data = memoryview(blob)[16 + n + 8 * m:]
    if len(data) != m * PAGE:
        raise ValueError(f"{path.name}: truncated")
    return flags, {a: data[i * PAGE:(i + 1) * PAGE] for i, a in enumerate(addrs)}


def _read_pagemap(path: Path):
    blob = path.read_bytes()
    header, pos = blob[:8], 8
    messages = []
    while pos < len(blob):
        (size,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        msg = pb().pagemap_head() if not messages else pb().pagemap_entry()
        msg.ParseFromString(blob[pos:pos + size])
        messages.append(msg)
        pos += size
    return header, messages[0], messages[1:]


def _pagemap_bytes(header: bytes, head, entries) -> bytes:
    out = [header]
    for msg in [head, *entries]:
        raw = msg.SerializeToString()
        out.append(struct.pack("<I", len(raw)) + raw)
    return b"".join(out)


def _runs(addrs: list[int]) -> list[tuple[int, int]]:
    """Sorted page addresses as (first, count) runs of consecutive pages."""
    runs: list[tuple[int, int]] = []
    for a in addrs:
        if runs and runs[-1][0] + runs[-1][1] * PAGE == a:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((a, 1))
    return runs


def _mark_in_parent(entries, keys: list[int]) -> tuple[list, int]:
    """The dump's pagemap entries with the lazy pages among ``keys`` (sorted) split out as
    entries in the parent; how many pages that marked."""
    out, marked = [], 0
    for e in entries:
        nr = e.nr_pages or e.compat_nr_pages
        end = e.vaddr + nr * PAGE
        inside = keys[bisect.bisect_left(keys, e.vaddr):bisect.bisect_left(keys, end)]
        if e.flags != PE_LAZY or not inside:
            out.append(e)
            continue
        at = e.vaddr
        for first, count in _runs(inside):
            if first > at:
                out.append(_entry(at, (first - at) // PAGE, e.flags))
            out.append(_entry(first, count, PE_PARENT))
            marked += count
            at = first + count * PAGE
        if at < end:
            out.append(_entry(at, (end - at) // PAGE, e.flags))
    return out, marked


def install(images: Path, ahead: Ahead, parent: Path) -> int:
    """Inside the freeze, before the restore: the pages of process ``ahead.vpid`` that the
    verdict knows (unchanged, or changed with their new contents) are made the parent's in
    its pagemap. How many pages that made present."""
    verdict, pagemap = images / f"hot-{ahead.vpid}.verdict", images / f"pagemap-{ahead.vpid}.img"
    if not verdict.exists() or not pagemap.exists():
        return 0
    flags, changed = _read_verdict(verdict, len(ahead.sent))
    if changed:
        fd = os.open(ahead.pages, os.O_WRONLY)
        try:
            for addr, data in changed.items():
                if addr in ahead.index:
                    os.pwrite(fd, data, ahead.index[addr] * PAGE)
        finally:
            os.close(fd)
    keys = sorted([a for i, a in enumerate(ahead.sent) if flags[i]] + [a for a in changed if a in ahead.index])
    header, head, entries = _read_pagemap(pagemap)
    entries, marked = _mark_in_parent(entries, keys)
    if not marked:
        return 0
    link = images / PARENT_LINK
    if not link.is_symlink():
        # relative: the restored task opens it from inside the container's mount namespace,
        # where this host's absolute paths need not exist (a container of another image)
        link.symlink_to(os.path.relpath(parent, images))
    tmp = pagemap.with_suffix(".tmp")
    _private_file(tmp, _pagemap_bytes(header, head, entries))
    tmp.replace(pagemap)          # the one change to the dump's images: all of it, or none
    return marked


def merge(images: Path, ahead: dict[int, Ahead], parent: Path) -> int:
    """Before the restore: every process's pages sent ahead (``load_ahead``) and known at
    the freeze are read from the parent image set instead of the page server. How many."""
    return sum(install(images, a, parent) for a in ahead.values())
