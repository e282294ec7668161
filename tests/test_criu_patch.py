"""Our patch to CRIU (cloudmig/bootstrap-host), checked against the CRIU the bootstrap built,
on a process of our own outside any container."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pycriu
import pytest

from cloudmig import paths
from cloudmig.runtime import sockets

PE_LAZY = 1 << 1                 # criu/images/pagemap.proto
MEMORY_MIB = 64

# What both test processes start with: MEMORY_MIB of private anonymous memory, written.
PRELUDE_C = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

static int touch_memory(void)
{
	size_t len = (size_t)MEMORY_MIB << 20;
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (mem == MAP_FAILED)
		return -1;
	memset(mem, 0x5a, len);
	printf("ready\n");
	fflush(stdout);
	return 0;
}
""".replace("MEMORY_MIB", str(MEMORY_MIB))

# Waits in pause() with its stack pointer on a page boundary (a page-aligned stack of its own).
ALIGNED_SP_C = PRELUDE_C + r"""
static char stack[4 * 4096] __attribute__((aligned(4096)));

int main(void)
{
	if (touch_memory())
		return 1;
	for (;;)
		asm volatile("mov %%rsp, %%r12\n\t"
			     "mov %0, %%rsp\n\t"
			     "mov $34, %%eax\n\t"        /* pause(2) */
			     "syscall\n\t"
			     "mov %%r12, %%rsp"
			     : : "r"(stack + 2 * 4096) : "rax", "rcx", "r11", "r12", "memory");
}
"""

# Waits in pause() a few pages down its own stack (glibc registered its rseq area at start).
STACK_IN_USE_C = PRELUDE_C + r"""
static int deep(int n)
{
	volatile char frame[3000];

	memset((char *)frame, n, sizeof(frame));
	if (n == 0)
		for (;;)
			pause();
	return deep(n - 1) + frame[7];
}

int main(void)
{
	if (touch_memory())
		return 1;
	return deep(4);
}
"""


def _process(tmp_path, source: str):
    src, exe = tmp_path / "proc.c", tmp_path / "proc"
    src.write_text(source)
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    yield from run_until_ready([str(exe)], tmp_path / "out.txt")


def run_until_ready(argv: list[str], out_path):
    """A test process, yielded once it printed "ready" (its output goes to ``out_path``),
    killed afterwards."""
    out = open(out_path, "w+")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while "ready" not in out_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, "the test process did not start"
            time.sleep(0.02)
        yield proc
    finally:
        proc.kill()
        proc.wait()
        out.close()


@pytest.fixture
def aligned_sp_process(tmp_path):
    yield from _process(tmp_path, ALIGNED_SP_C)


@pytest.fixture
def stack_in_use_process(tmp_path):
    yield from _process(tmp_path, STACK_IN_USE_C)


def _start_lazy_dump(pid: int, images, port: int, *extra: str) -> subprocess.Popen:
    """CRIU's lazy dump of PID, returned once its page server listens on 127.0.0.1:PORT."""
    images.mkdir()
    dump = subprocess.Popen([paths.criu_binary(), "dump", "-t", str(pid), "-D", str(images),
                             "-o", "dump.log", "-v4", "--lazy-pages", "--address", "127.0.0.1",
                             "--port", str(port), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    log = images / "dump.log"
    deadline = time.monotonic() + 30
    while "Starting lazy pages server" not in (log.read_text() if log.exists() else ""):
        if dump.poll() is not None or time.monotonic() > deadline:
            os.killpg(dump.pid, signal.SIGKILL)
            dump.wait()
            raise AssertionError(log.read_text() if log.exists() else "no dump log")
        time.sleep(0.05)
    return dump


def _lazy_dump(pid: int, images) -> tuple[list[dict], dict, int]:
    """CRIU's lazy dump of PID, up to its page server: (pagemap entries, core, bytes of pages)."""
    dump = _start_lazy_dump(pid, images, sockets.free_port("127.0.0.1"))
    try:
        with open(images / f"pagemap-{pid}.img", "rb") as f:
            entries = pycriu.images.load(f)["entries"][1:]
        with open(images / f"core-{pid}.img", "rb") as f:
            core = pycriu.images.load(f)["entries"][0]
        pages_img = sum(p.stat().st_size for p in images.glob("pages-*.img"))
    finally:
        os.killpg(dump.pid, signal.SIGKILL)
        dump.wait()
    return entries, core, pages_img


def _lazy_pages(entries: list[dict]) -> int:
    return sum(e["nr_pages"] for e in entries if e["flags"] & PE_LAZY)


def _entry_at(entries: list[dict], addr: int) -> dict | None:
    page = addr & ~4095
    return next((e for e in entries if e["vaddr"] <= page < e["vaddr"] + e["nr_pages"] * 4096), None)


def test_a_stack_pointer_on_a_page_boundary_leaves_memory_lazy(aligned_sp_process, tmp_path):
    """CRIU keeps each thread's stack page out of the lazy pages. Its test compared the page
    offsets of the stack pointer and the page (``& ~PAGE_MASK``), so a thread whose stack
    pointer sat on a page boundary made every page of the process a "stack page": the whole
    memory went into the images, inside the freeze (seen in the bench as a 6.3-6.5 s freeze at
    1 GiB, a few times in some hundred runs). Our patch compares the pages."""
    pid = aligned_sp_process.pid
    syscall = open(f"/proc/{pid}/syscall").read().split()
    assert syscall[0] == "34" and int(syscall[-2], 16) % 4096 == 0, syscall   # in pause, sp aligned
    entries, _, pages_img = _lazy_dump(pid, tmp_path / "images")
    lazy = _lazy_pages(entries)
    assert lazy >= MEMORY_MIB * 256, f"only {lazy} pages left lazy"
    assert pages_img < 4 << 20, f"{pages_img} bytes of pages in the images"


def test_what_a_restore_touches_first_is_in_the_images(stack_in_use_process, tmp_path):
    """The restorer writes each thread's rseq area before the process runs, and the resumed
    thread works on the top of its stack at once. Were those pages lazy, each would be a
    fault, a round trip to the source, inside the freeze (over a 50 ms WAN: the lazy-pages
    daemon's connection and the rseq area's fault, ~100 ms of a ~215 ms freeze). Our patch
    keeps the rseq area's page and FIRST_TOUCH_STACK (16 KiB) of stack from the stack
    pointer's page up out of the lazy pages."""
    entries, core, _ = _lazy_dump(stack_in_use_process.pid, tmp_path / "images")
    sp = core["thread_info"]["gpregs"]["sp"]
    rseq = core["thread_core"]["rseq_entry"]["rseq_abi_pointer"]
    assert rseq, "glibc registered no rseq area"
    for addr in [rseq] + [(sp & ~4095) + k * 4096 for k in range(4)]:
        entry = _entry_at(entries, addr)
        if entry is None and addr != rseq and addr != sp:
            continue                  # above the stack's top, or never touched: not in the images
        assert entry is not None and not entry["flags"] & PE_LAZY, (hex(addr), entry)
    assert _lazy_pages(entries) >= MEMORY_MIB * 256       # the rest of the memory stays lazy


def test_a_page_client_that_leaves_unasked_does_not_end_the_lazy_dump(stack_in_use_process, tmp_path):
    """The lazy-pages daemon connects to the source's page server as soon as the restore
    connects to it, so that the handshake (a WAN's round trip) overlaps the restore. A restore
    that fails then closes that connection before asking for a page; the page server used to
    end there, and with it the lazy dump, which resumed the source's copy on its own, before
    the controller had rolled anything back. Our patch has it take another client instead;
    the controller ends it with PS_IOV_CLOSE (sockets.abort_page_server), and the process,
    dumped with --leave-running, runs on."""
    pid, port = stack_in_use_process.pid, sockets.free_port("127.0.0.1")
    dump = _start_lazy_dump(pid, tmp_path / "images", port, "--leave-running")
    log = tmp_path / "images" / "dump.log"
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()    # a failed restore's daemon
        deadline = time.monotonic() + 30
        while "accepting another" not in log.read_text():
            assert dump.poll() is None, "the lazy dump ended with its first page client"
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.05)
        sockets.abort_page_server("127.0.0.1", port)
        assert dump.wait(timeout=30) == 0, log.read_text()[-2000:]
    finally:
        if dump.poll() is None:
            os.killpg(dump.pid, signal.SIGKILL)
            dump.wait()
    state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    assert state == "S", f"the dumped process is in state {state}, not back in its pause()"
