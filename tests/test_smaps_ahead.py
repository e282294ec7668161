"""The copies of smaps taken before the freeze (cloudmig.runtime.smaps_ahead) and our CRIU
patch that reads them: on a process of our own, dumped by the CRIU the bootstrap built. The
process keeps running after each dump (--leave-running) and changes nothing unless signalled,
so what smaps says after the dump is what it said during it."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pycriu
import pytest

from cloudmig import errors, paths
from cloudmig.runtime import smaps_ahead
from test_criu_patch import run_until_ready

MIB = 8
MADV_DONTFORK = 10

# MIB of private anonymous memory, written; SIGUSR1: madvise(MADV_DONTFORK) on all of it (its
# flags change, its maps line does not); SIGUSR2: one more mapping (its maps change).
FLAGS_C = r"""
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

static char *mem;
static volatile sig_atomic_t dontfork, more;

static void on_usr1(int sig) { dontfork = 1; }
static void on_usr2(int sig) { more = 1; }

int main(void)
{
	size_t len = (size_t)MIB << 20;

	mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return 1;
	memset(mem, 0x5a, len);
	signal(SIGUSR1, on_usr1);
	signal(SIGUSR2, on_usr2);
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		pause();
		if (dontfork && madvise(mem, len, MADV_DONTFORK) == 0)
			printf("dontfork\n");
		if (more && mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) != MAP_FAILED)
			printf("more\n");
		dontfork = more = 0;
		fflush(stdout);
	}
}
""".replace("MIB", str(MIB))


@pytest.fixture
def proc(tmp_path):
    src, exe = tmp_path / "flags.c", tmp_path / "flags"
    src.write_text(FLAGS_C)
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    yield from run_until_ready([str(exe)], tmp_path / "out.txt")


def _signal(proc, sig: int, word: str, out) -> None:
    os.kill(proc.pid, sig)
    deadline = time.monotonic() + 10
    while word not in out.read_text():
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.01)


def _dump(pid: int, images, copies=None) -> tuple[list[dict], str]:
    """CRIU's dump of PID (which runs on): its mappings as the mm image has them, and the log."""
    images.mkdir()
    env = os.environ | smaps_ahead.env(copies) if copies else None
    subprocess.run([paths.criu_binary(), "dump", "-t", str(pid), "-D", str(images), "-o", "dump.log",
                    "-v4", "--leave-running"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(images / f"mm-{pid}.img", "rb") as f:
        vmas = pycriu.images.load(f)["entries"][0]["vmas"]
    return vmas, (images / "dump.log").read_text()


def _the_mapping(vmas: list[dict]) -> dict:
    (vma,) = [v for v in vmas if v["end"] - v["start"] == MIB << 20]
    return vma


def _dontfork(vma: dict) -> bool:
    return bool(vma.get("madv", 0) & (1 << MADV_DONTFORK))


def test_a_dump_takes_the_flags_from_the_copy_while_the_mappings_are_the_same(proc, tmp_path):
    copies = tmp_path / "copies"
    assert smaps_ahead.take([proc.pid], copies) == 1
    assert (copies / str(proc.pid)).stat().st_mode & 0o777 == 0o600
    assert b"Rss:" not in (copies / str(proc.pid)).read_bytes()    # nothing counted, only flags
    vmas, log = _dump(proc.pid, tmp_path / "from-copy", copies)
    assert f"smaps of {proc.pid}: VmFlags from the copy" in log
    # the same mappings, flags and advice as a dump that read smaps itself
    read, read_log = _dump(proc.pid, tmp_path / "from-smaps")
    assert "VmFlags from the copy" not in read_log
    assert vmas == read
    used = smaps_ahead.used_in_log(log)
    assert used == {proc.pid}
    assert smaps_ahead.check(smaps_ahead.look(copies), used) == smaps_ahead.Checked(used=1, read=0)


def test_a_flag_changed_since_the_copy_is_caught_after_the_dump(proc, tmp_path):
    """madvise on a whole mapping changes its flags and not its maps line: the dump takes the
    stale flags from the copy (why the check exists). The check (smaps read again, CRIU's log
    saying whose flags came from a copy) fails the dump."""
    copies = tmp_path / "copies"
    smaps_ahead.take([proc.pid], copies)
    _signal(proc, signal.SIGUSR1, "dontfork", tmp_path / "out.txt")
    vmas, log = _dump(proc.pid, tmp_path / "images", copies)
    assert f"smaps of {proc.pid}: VmFlags from the copy" in log
    assert not _dontfork(_the_mapping(vmas))          # stale
    with pytest.raises(errors.CheckpointError, match="changed the flags of a memory mapping.* dc"):
        smaps_ahead.check(smaps_ahead.look(copies), smaps_ahead.used_in_log(log))
    read, _ = _dump(proc.pid, tmp_path / "read")
    assert _dontfork(_the_mapping(read))              # what smaps says


def test_mappings_changed_since_the_copy_make_the_dump_read_smaps(proc, tmp_path):
    copies = tmp_path / "copies"
    smaps_ahead.take([proc.pid], copies)
    _signal(proc, signal.SIGUSR2, "more", tmp_path / "out.txt")
    _signal(proc, signal.SIGUSR1, "dontfork", tmp_path / "out.txt")
    vmas, log = _dump(proc.pid, tmp_path / "images", copies)
    assert f"smaps of {proc.pid}: read" in log
    assert _dontfork(_the_mapping(vmas))              # read, not copied
    # its flags changed too, but CRIU read them itself: nothing stale
    seen = smaps_ahead.look(copies)
    assert proc.pid in seen.changed
    assert smaps_ahead.check(seen, smaps_ahead.used_in_log(log)) == smaps_ahead.Checked(used=0, read=1)
