"""The pages sent ahead of the freeze (cloudmig.runtime.hot_pages): found from the stacks,
judged at the freeze, installed into CRIU's images as a parent image set, and in a real
post-copy move a page that changed between the two arrives with its new contents."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time

import pycriu
import pytest

from busybox_image import make_busybox_rootfs
from cloudmig.runtime import hot_pages, sockets
from lab import connect, lab_fixture
from test_criu_patch import PE_LAZY, _start_lazy_dump, run_until_ready

PE_PARENT = 1 << 0
HOT = 64                 # pages the table points to
PAGES = 4096             # 16 MiB of memory in all
STRIDE = 61              # pages between two pointed-to pages

# A server with PAGES pages of known contents. A local variable on its stack points to a
# table page, whose words point to HOT of those pages (the first holds a counter): what the
# scan follows, two levels deep. "BUMP" adds one to the counter and answers it; "CHECK"
# compares every page with its pattern (the counter's 8 bytes aside).
SERVER_C = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>

#define PAGE 4096L

static long bad_pages(const char *mem)
{
	long bad = 0;

	for (long i = 0; i < PAGES; i++)
		for (long j = i == 0 ? 16 : 0; j < PAGE; j++)
			if (mem[i * PAGE + j] != (char)(i * 7 + 1)) {
				bad++;
				break;
			}
	return bad;
}

int main(int argc, char **argv)
{
	char *mem = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char **volatile table = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])) };
	int one = 1, srv = socket(AF_INET, SOCK_STREAM, 0);
	char line[64];

	for (long i = 0; i < PAGES; i++)
		memset(mem + i * PAGE, (int)(i * 7 + 1), PAGE);
	for (long i = 0; i < HOT; i++)
		table[i] = mem + i * STRIDE * PAGE + 8;
	*(volatile uint64_t *)table[0] = 0;
	setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(srv, (struct sockaddr *)&addr, sizeof(addr)) || listen(srv, 4))
		return 1;
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		FILE *f = fdopen(accept(srv, NULL, NULL), "r+");

		while (f && fgets(line, sizeof(line), f)) {
			if (!strcmp(line, "BUMP\n"))
				fprintf(f, "%lu\n", (unsigned long)++*(volatile uint64_t *)table[0]);
			else if (!strcmp(line, "CHECK\n"))
				fprintf(f, "%ld\n", bad_pages(mem));
			fflush(f);
		}
		if (f)
			fclose(f);
	}
}
""".replace("PAGES", str(PAGES)).replace("HOT", str(HOT)).replace("STRIDE", str(STRIDE))


@pytest.fixture
def server_binary(tmp_path):
    """The server, static, as /hotsrv of a rootfs directory (the image the lab test runs: a
    container of an image of its own, whose root is not the host's)."""
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")       # its /bin/sh gives cloudmig the stdio
    src, exe = tmp_path / "hotsrv.c", rootfs / "hotsrv"
    src.write_text(SERVER_C)
    subprocess.run(["gcc", "-O2", "-static", "-o", str(exe), str(src)], check=True)
    return exe


@pytest.fixture
def server(server_binary, tmp_path):
    """The server as a plain process of this machine, listening on a loopback port."""
    port = sockets.free_port("127.0.0.1")
    for proc in run_until_ready([str(server_binary), str(port)], tmp_path / "out.txt"):
        yield proc, port


def _pointed_pages(pid: int) -> list[int]:
    """The HOT pages the table points to: the table page is the one whose first word is the
    start of the memory plus 8."""
    for line in open(f"/proc/{pid}/maps"):
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if hi - lo == PAGES * 4096:
            return [lo + i * STRIDE * 4096 for i in range(HOT)]
    raise AssertionError("the server's memory is not mapped")


def _bump(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"BUMP\n")
        return int(s.makefile().readline())


def test_the_scan_follows_the_stack_two_levels_and_the_verdict_sees_what_changed(server, tmp_path):
    proc, port = server
    time.sleep(0.1)                            # back in accept(): its stack pointer is known
    hot = hot_pages.scan([proc.pid])
    [pages] = hot.values()
    assert pages.vpid == proc.pid and pages.pid == proc.pid
    pointed = _pointed_pages(proc.pid)
    assert set(pointed) <= set(pages.addrs), "the scan missed pages the table points to"
    with open(f"/proc/{proc.pid}/mem", "rb") as mem:
        for i, addr in enumerate(pages.addrs):
            mem.seek(addr)
            assert mem.read(4096) == pages.data[i * 4096:(i + 1) * 4096], hex(addr)
    assert hot_pages.write(hot, tmp_path / "ahead") > len(pages.addrs) * 4096
    assert _bump(port) == 1                   # the counter's page changes after the scan
    verdict = _stopped_verdict(proc.pid, hot, tmp_path)
    # the counter's page, and the heap where the connection's FILE came and went
    assert 1 <= verdict.changed <= 3 and verdict.dropped == 0
    assert verdict.unchanged + verdict.changed == len(pages.addrs) and verdict.unchanged >= HOT


def test_the_budget_is_for_the_whole_container(server, server_binary, tmp_path):
    """A container of many processes sends no more than one of one process would."""
    proc, _ = server
    other = subprocess.Popen([str(server_binary), str(sockets.free_port("127.0.0.1"))],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        alone = len(hot_pages.scan([proc.pid])[proc.pid].addrs)
        both = hot_pages.scan([proc.pid, other.pid], budget=alone + 5)
        assert len(both[proc.pid].addrs) == alone and len(both[other.pid].addrs) == 5
        assert list(hot_pages.scan([proc.pid, other.pid], budget=alone)) == [proc.pid]
    finally:
        other.kill()
        other.wait()


def _stopped_verdict(pid: int, hot: dict, into) -> hot_pages.Verdict:
    time.sleep(0.1)                            # the server is back in accept()
    os.kill(pid, signal.SIGSTOP)
    try:
        into.mkdir(exist_ok=True)
        return hot_pages.write_verdicts(hot, into)
    finally:
        os.kill(pid, signal.SIGCONT)


def test_pages_known_at_the_freeze_become_a_parent_image_set(server, tmp_path):
    """Against a real lazy dump: the pagemap marks exactly the pages sent ahead (and still
    lazy) as in the parent; the parent holds their contents at the freeze, the changed page's
    new contents included; the rest stays lazy."""
    proc, port = server
    time.sleep(0.1)
    hot = hot_pages.scan([proc.pid])
    hot_pages.write(hot, tmp_path / "ahead")
    _bump(port)
    expected = _stopped_verdict(proc.pid, hot, tmp_path / "stopped")
    images, parent = tmp_path / "images", tmp_path / "parent"
    dump = _start_lazy_dump(proc.pid, images, sockets.free_port("127.0.0.1"), "--leave-running")
    try:
        verdict = hot_pages.write_verdicts(hot, images)
        with open(f"/proc/{proc.pid}/mem", "rb") as mem:      # frozen by CRIU: as dumped
            mem.seek(_pointed_pages(proc.pid)[0])
            counter_page = mem.read(4096)
    finally:
        os.killpg(dump.pid, signal.SIGKILL)
        dump.wait()
    # CRIU's dump changed none of them: the source judges them while CRIU works
    assert verdict == expected and verdict.changed >= 1
    with open(images / f"pagemap-{proc.pid}.img", "rb") as f:
        lazy_before = sum(e["nr_pages"] for e in pycriu.images.load(f)["entries"][1:] if e["flags"] & PE_LAZY)
    ahead = hot_pages.load_ahead(tmp_path / "ahead", parent)
    installed = hot_pages.merge(images, ahead, parent)
    assert installed >= HOT
    assert (images / "parent").resolve() == parent.resolve()
    with open(images / f"pagemap-{proc.pid}.img", "rb") as f:
        entries = pycriu.images.load(f)["entries"][1:]
    in_parent = [e["vaddr"] + k * 4096 for e in entries if e["flags"] == PE_PARENT for k in range(e["nr_pages"])]
    assert len(in_parent) == installed and set(_pointed_pages(proc.pid)) <= set(in_parent)
    assert sum(e["nr_pages"] for e in entries if e["flags"] & PE_LAZY) == lazy_before - installed
    # the parent's pages, read as CRIU reads them: in address order, by its pagemap
    with open(parent / f"pagemap-{proc.pid}.img", "rb") as f:
        [head, *pentries] = pycriu.images.load(f)["entries"]
    blob = (parent / f"pages-{head['pages_id']}.img").read_bytes()
    contents, off = {}, 0
    for e in pentries:
        for k in range(e["nr_pages"]):
            contents[e["vaddr"] + k * 4096] = blob[off:off + 4096]
            off += 4096
    first = _pointed_pages(proc.pid)[0]
    assert contents[first] == counter_page
    assert struct.unpack_from("<Q", contents[first], 8)[0] == 1
    assert contents[_pointed_pages(proc.pid)[5]] == bytes([(5 * STRIDE * 7 + 1) & 0xFF]) * 4096


lab = lab_fixture(2)


def test_a_page_that_changes_before_the_freeze_arrives_as_it_was_at_the_freeze(lab, server_binary, tmp_path):
    """A client bumps a counter that lives in one of the pages sent ahead, as fast as it can,
    through the move: the page changes between the scan and the freeze. Had its stale copy
    been installed, the counter would step back."""
    port = 18080
    lab.cm("run", "h1", "hot", "--image", str(server_binary.parent), "--publish", f"{port}:{port}",
           "--", "/hotsrv", str(port))
    sock, f = connect(lab.public_address("h1"), port)
    seen, errors, stop = [], [], threading.Event()

    def bump() -> None:
        try:
            while not stop.is_set():
                f.write(b"BUMP\n")
                f.flush()
                seen.append(int(f.readline()))
        except Exception as exc:      # recorded; asserted below
            errors.append(repr(exc))

    client = threading.Thread(target=bump)
    client.start()
    try:
        while len(seen) < 100:
            assert not errors and client.is_alive(), errors
            time.sleep(0.01)
        lab.cm("migrate", "hot", "--to", "h2", "--mode", "postcopy", "--report", str(tmp_path / "r.json"),
               timeout=600)
        after = len(seen)
        deadline = time.monotonic() + 30
        while len(seen) < after + 100:
            assert not errors and time.monotonic() < deadline, errors
            time.sleep(0.01)
    finally:
        stop.set()
        client.join(10)
    assert not errors, errors
    assert seen == list(range(1, len(seen) + 1)), "the counter stepped back or skipped"
    with sock:
        f.write(b"CHECK\n")
        f.flush()
        assert int(f.readline()) == 0, "pages differ from their pattern after the move"
    report = json.loads((tmp_path / "r.json").read_text())
    hot = report["hot_pages"]
    assert report["ok"] and hot.get("installed", 0) >= HOT and hot["changed"] >= 1, hot
    assert hot["installed"] <= hot["unchanged"] + hot["changed"], hot
    [row] = lab.ps()
    assert row["host"] == "h2"
