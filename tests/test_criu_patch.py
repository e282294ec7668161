"""Our patch to CRIU (cloudmig/bootstrap-host), checked against the CRIU the bootstrap built,
on a process of our own outside any container."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pycriu
import pytest

from cloudmig import paths
from cloudmig.runtime import sockets

PE_LAZY = 1 << 1                 # criu/images/pagemap.proto
MEMORY_MIB = 64

# Touches MEMORY_MIB of private anonymous memory, then waits in pause() with its stack pointer
# on a page boundary (a page-aligned stack of its own).
ALIGNED_SP_C = r"""
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

static char stack[4 * 4096] __attribute__((aligned(4096)));

int main(void)
{
	size_t len = (size_t)MEMORY_MIB << 20;
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (mem == MAP_FAILED)
		return 1;
	memset(mem, 0x5a, len);
	printf("ready\n");
	fflush(stdout);
	for (;;)
		asm volatile("mov %%rsp, %%r12\n\t"
			     "mov %0, %%rsp\n\t"
			     "mov $34, %%eax\n\t"        /* pause(2) */
			     "syscall\n\t"
			     "mov %%r12, %%rsp"
			     : : "r"(stack + 2 * 4096) : "rax", "rcx", "r11", "r12", "memory");
}
""".replace("MEMORY_MIB", str(MEMORY_MIB))


@pytest.fixture
def aligned_sp_process(tmp_path):
    src, exe = tmp_path / "aligned_sp.c", tmp_path / "aligned_sp"
    src.write_text(ALIGNED_SP_C)
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    out = open(tmp_path / "out.txt", "w+")
    proc = subprocess.Popen([str(exe)], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while "ready" not in (tmp_path / "out.txt").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, "the test process did not start"
            time.sleep(0.02)
        yield proc
    finally:
        proc.kill()
        proc.wait()
        out.close()


def test_a_stack_pointer_on_a_page_boundary_leaves_memory_lazy(aligned_sp_process, tmp_path):
    """CRIU keeps each thread's stack page out of the lazy pages. Its test compared the page
    offsets of the stack pointer and the page (``& ~PAGE_MASK``), so a thread whose stack
    pointer sat on a page boundary made every page of the process a "stack page": the whole
    memory went into the images, inside the freeze (seen in the bench as a 6.3-6.5 s freeze at
    1 GiB, a few times in some hundred runs). Our patch compares the pages."""
    pid = aligned_sp_process.pid
    syscall = open(f"/proc/{pid}/syscall").read().split()
    assert syscall[0] == "34" and int(syscall[-2], 16) % 4096 == 0, syscall   # in pause, sp aligned
    images = tmp_path / "images"
    images.mkdir()
    dump = subprocess.Popen([paths.criu_binary(), "dump", "-t", str(pid), "-D", str(images),
                             "-o", "dump.log", "-v4", "--lazy-pages", "--address", "127.0.0.1",
                             "--port", str(sockets.free_port("127.0.0.1"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        log = images / "dump.log"
        deadline = time.monotonic() + 30
        while "Starting lazy pages server" not in (log.read_text() if log.exists() else ""):
            assert dump.poll() is None, log.read_text() if log.exists() else "no dump log"
            assert time.monotonic() < deadline, "CRIU's dump did not get to its page server"
            time.sleep(0.05)
        with open(images / f"pagemap-{pid}.img", "rb") as f:
            entries = pycriu.images.load(f)["entries"][1:]
        lazy = sum(e["nr_pages"] for e in entries if e["flags"] & PE_LAZY)
        pages_img = sum(p.stat().st_size for p in images.glob("pages-*.img"))
    finally:
        os.killpg(dump.pid, signal.SIGKILL)
        dump.wait()
    assert lazy >= MEMORY_MIB * 256, f"only {lazy} pages left lazy"
    assert pages_img < 4 << 20, f"{pages_img} bytes of pages in the images"
