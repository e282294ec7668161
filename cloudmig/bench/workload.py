"""The benchmark's container: a TCP server holding N MiB of checksummable memory.

    command = workload.command(port=7000, memory_mib=256, dirty_mibps=50)   # python3 -c SCRIPT ...

The server fills ``memory_mib`` MiB with a pattern that depends only on the page number and a
random ``seed`` chosen at start (a fresh start = a new seed: that is how a client tells "state
survived" from "state lost"), optionally rewrites pages at ``dirty_mibps`` MiB/s in a thread
(same bytes, so checksums stay verifiable, but every write is a real write: in post-copy a
write to a page that has not arrived faults it in), and answers one line per request:

    INFO          -> "seed pages counter dirtied_pages"
    REQ PAGE      -> "counter crc32(page)"   (counter += 1: continuity across a migration)
    VERIFY        -> "bad_pages"             (every page compared with its pattern)

The script is stdlib-only and runs under the machine's own python3 (the `host` image). It is
passed on the command line: a file under the bench's directory is not visible in the
container when that directory is on another mount than / (a tmpfs /tmp, as on Debian 13).
"""

from __future__ import annotations

import zlib

PAGE = 4096


def page_pattern(seed: int, page: int) -> bytes:
    """What page ``page`` holds (the client computes the same to check answers)."""
    return (page.to_bytes(8, "little") + seed.to_bytes(8, "little")) * (PAGE // 16)


def page_crc(seed: int, page: int) -> int:
    return zlib.crc32(page_pattern(seed, page))


SCRIPT = r'''
import os, socket, sys, threading, time, zlib
PAGE = 4096
port, mib, dirty_mibps = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
seed = int.from_bytes(os.urandom(8), "little")
pages = mib * 256
def pattern(p):
    return (p.to_bytes(8, "little") + seed.to_bytes(8, "little")) * (PAGE // 16)
mem = bytearray(pages * PAGE)
view = memoryview(mem)
for p in range(pages):
    view[p * PAGE:(p + 1) * PAGE] = pattern(p)
state = {"counter": 0, "dirtied": 0}
def dirtier():
    batch = 64                          # pages per write burst
    interval = batch * PAGE / (dirty_mibps * 2**20)
    p, nxt = 0, time.monotonic()
    while True:
        for _ in range(batch):
            view[p * PAGE:(p + 1) * PAGE] = pattern(p)
            p = (p + 7919) % pages      # stride over the whole region
        state["dirtied"] += batch
        nxt += interval
        time.sleep(max(0.0, nxt - time.monotonic()))
if dirty_mibps > 0:
    threading.Thread(target=dirtier, daemon=True).start()
def serve(conn):
    f = conn.makefile("rwb")
    for line in f:
        words = line.split()
        if not words:
            continue
        if words[0] == b"REQ":
            p = int(words[1]) % pages
            state["counter"] += 1
            out = "%d %d" % (state["counter"], zlib.crc32(view[p * PAGE:(p + 1) * PAGE]))
        elif words[0] == b"INFO":
            out = "%d %d %d %d" % (seed, pages, state["counter"], state["dirtied"])
        elif words[0] == b"VERIFY":
            out = str(sum(1 for p in range(pages) if view[p * PAGE:(p + 1) * PAGE] != pattern(p)))
        else:
            out = "ERR"
        f.write(out.encode() + b"\n")
        f.flush()
    conn.close()
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", port))
srv.listen(8)
print("ready", mib, "MiB seed", seed, flush=True)
while True:
    c, _ = srv.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=serve, args=(c,), daemon=True).start()
'''


def command(*, port: int, memory_mib: int, dirty_mibps: float) -> list[str]:
    return ["python3", "-u", "-c", SCRIPT, str(port), str(memory_mib), str(dirty_mibps)]
