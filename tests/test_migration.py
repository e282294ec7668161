"""Live migration of a Debian-packaged server (redis-server, unmodified, `host` image) with a
few hundred MiB in memory, while a client holds one TCP connection through the source's
public address and issues requests continuously."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from lab import Lab, connect, lab_fixture, resp
import redis_client
from redis_client import HeldClient

PORT = 16379
KEYS = 300_000
VALUE_BYTES = 1000       # ~340 MiB resident
REDIS = ["redis-server", "--port", "6379", "--protected-mode", "no", "--save", "",
         "--appendonly", "no", "--enable-debug-command", "yes"]


lab = lab_fixture(3)


MEMORY_LIMIT_MIB = 2048
HOST_NAME = socket.gethostname()    # this machine's, which no restore may change


def start_db(lab: Lab, host: str = "h1") -> list[str]:
    """Redis on ``host``, filled; the digests of its sampled keys (for ``check_data``)."""
    lab.cm("run", host, "db", "--publish", f"{PORT}:6379", "--memory-mib", str(MEMORY_LIMIT_MIB),
           "--", *REDIS)
    sock, f = connect(lab.public_address(host), PORT)
    with sock:
        assert resp(f, "DEBUG", "POPULATE", str(KEYS), "key", str(VALUE_BYTES)) == "OK"
        assert resp(f, "DBSIZE") == KEYS
    return redis_client.digests(lab.public_address(host), PORT, KEYS)


def check_data(address: str, sampled: list[str]) -> None:
    redis_client.check_data(address, PORT, KEYS, VALUE_BYTES, sampled)


def migrate(lab: Lab, to: str, mode: str, report: Path) -> dict:
    lab.cm("migrate", "db", "--to", to, "--mode", mode, "--report", str(report), timeout=600)
    return json.loads(report.read_text())


def runs_only_on(lab: Lab, host: str) -> None:
    [row] = lab.ps()
    assert row["host"] == host and row["state"] == "running"
    hosts_dir = lab.state_dir / "hosts"
    for h in ("h1", "h2", "h3"):
        has = (hosts_dir / h / "containers" / "db").exists()
        assert has == (h == host), f"bundle of db on {h}: {has}"
    netns = [n for n in lab.netns() if n.endswith("-db")]
    assert netns == [f"{lab.lab_id}-c-{host}-db"]
    procs = [p for h in ("h1", "h2", "h3") for p in lab.processes_in_netns(f"{lab.lab_id}-c-{h}-db")]
    assert len(procs) == 1 and "redis-server" in procs[0], procs
    pid = lab.pids_in_netns(f"{lab.lab_id}-c-{host}-db")[0]
    masked_dirs_stay_hidden(pid)
    # CRIU restores the UTS namespace's names (our patch: without a forked worker)
    uts = subprocess.run(["nsenter", "-t", str(pid), "-u", "hostname"], capture_output=True, text=True)
    assert uts.stdout.strip() == "db" and socket.gethostname() == HOST_NAME


def masked_dirs_stay_hidden(pid: int) -> None:
    """runc masks /proc/acpi and /sys/firmware with empty read-only mounts; cloudmig has CRIU
    rebuild the first as a bind of an empty directory (no tmpfs dump in the freeze): both
    still empty and read-only inside the container after each move."""
    mounts = {line.split()[4]: line.split()[5] for line in open(f"/proc/{pid}/mountinfo")}
    for path in ("/proc/acpi", "/sys/firmware"):
        assert path in mounts, path
        assert "ro" in mounts[path].split(","), (path, mounts[path])
        assert os.listdir(f"/proc/{pid}/root{path}") == [], path


@pytest.mark.parametrize("mode", ["postcopy", "stopcopy"])
def test_migrate_keeps_the_connection_and_the_data(lab, tmp_path, mode):
    sampled = start_db(lab)
    client = HeldClient(lab.public_address("h1"), PORT).start()
    try:
        client.wait_answers(50)
        report = migrate(lab, "h2", mode, tmp_path / "report.json")
        before = client.answers
        client.wait_answers(before + 50)
    finally:
        client.stop()
    client.assert_healthy()
    assert client.peer[0] == lab.public_address("h1")
    assert report["ok"] is True and report["mode"] == mode
    assert report["freeze_ms"] > 0 and report["total_ms"] >= report["freeze_ms"]
    assert report["memory_bytes"] > 300 * 2**20
    names = [p["name"] for p in report["phases"]]
    assert names[:6] == ["preflight", "prepare", "arm", "hold", "dump", "restore"]
    assert report["state"] == "done" and report["control_round_trips_in_freeze"] > 0
    assert report["held_packets"] > 0       # the client's requests waited through the freeze
    if mode == "postcopy":
        assert report["lazy_pages"] > 50_000
        assert report["faulted_pages"] + report["pushed_pages"] == report["lazy_pages"]
        assert report["images_bytes"] < 50 * 2**20      # memory did not travel in the freeze
        # the pages found from the stacks went ahead, and most were read from them at the restore
        hot = report["hot_pages"]
        assert hot["sent"] > 0 and 0 < hot["installed"] <= hot["unchanged"] + hot["changed"], hot
        # the mappings' flags came from the copy of smaps taken at the arm, and still held
        assert report["smaps"] == {"used": 1, "read": 0}, report["smaps"]
    else:
        assert report["dumped_pages"] > 50_000
        assert report["images_bytes"] > 300 * 2**20
    runs_only_on(lab, "h2")
    # what came along: output written before the move (the log lives in the writable layer)
    # and the cgroup memory limit
    assert "Ready to accept connections" in lab.cm("logs", "db").stdout
    limit = Path(f"/sys/fs/cgroup/memory/cloudmig/{lab.lab_id}-h2/db/memory.limit_in_bytes")
    if limit.exists():  # cgroup v1 (these machines)
        assert int(limit.read_text()) == MEMORY_LIMIT_MIB * 2**20
    check_data(lab.public_address("h1"), sampled)    # through the forward
    check_data(lab.public_address("h2"), sampled)    # at the new home
    [row] = lab.ps()
    assert f"{lab.public_address('h1')}:{PORT}/tcp (forwarded)" in row["endpoints"]
    print(f"{mode}: freeze {report['freeze_ms']:.0f} ms, client's longest wait "
          f"{client.longest_wait_s * 1000:.0f} ms, {client.answers} answers")


def test_migrate_again_and_back(lab, tmp_path):
    sampled = start_db(lab)
    client = HeldClient(lab.public_address("h1"), PORT).start()
    try:
        client.wait_answers(20)
        for i, host in enumerate(("h2", "h3", "h1")):
            migrate(lab, host, "postcopy", tmp_path / f"r{i}.json")
            before = client.answers
            client.wait_answers(before + 20)
            assert client.answers >= before + 20, f"no answers after the move to {host}"
            runs_only_on(lab, host)
    finally:
        client.stop()
    client.assert_healthy()
    for h in ("h1", "h2", "h3"):
        check_data(lab.public_address(h), sampled)


def test_refused_up_front(lab, tmp_path):
    start_db(lab)
    for args, message in [
        (["migrate", "db", "--to", "h1"], "already runs on h1"),
        (["migrate", "nope", "--to", "h2"], "Unknown container"),
        (["migrate", "db", "--to", "h9"], "Unknown host"),
        (["migrate", "db", "--to", "h2", "--mode", "precopy"], "soft-dirty"),
        (["migrate", "db", "--to", "h2", "--mode", "teleport"], "not one of"),
    ]:
        res = lab.cm(*args, check=False)
        assert res.returncode == 2, (args, res.stderr)
        assert "Error:" in res.stderr and message in res.stderr, (args, res.stderr)
    runs_only_on(lab, "h1")


# A server whose memory is partly PROT_NONE: 64 MiB of private anonymous memory filled with a
# pattern, then its first half made unreadable (a VMA split in two, pages contiguous). CRIU's
# lazy pages include both halves; the source's page server reads them from the frozen process
# after the freeze (our CRIU patch), which for the unreadable half means /proc/PID/mem.
# "CRC" makes the half readable for a moment and answers the checksum of all 64 MiB, then
# the one computed before anything moved.
UNREADABLE_SERVER = r'''
import ctypes, socket, zlib
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
SIZE, PAGE = 64 << 20, 4096
addr = libc.mmap(None, SIZE, 3, 0x22, -1, 0)        # PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS
for p in range(SIZE // PAGE):
    ctypes.memmove(addr + p * PAGE, (p.to_bytes(8, "little") * 7 + b"cloudmig") * (PAGE // 64), PAGE)
expected = zlib.crc32(ctypes.string_at(addr, SIZE))
assert libc.mprotect(addr, SIZE // 2, 0) == 0       # PROT_NONE
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 7000))
srv.listen(4)
while True:
    conn, _ = srv.accept()
    f = conn.makefile("rwb")
    for line in f:
        assert libc.mprotect(addr, SIZE // 2, 1) == 0
        crc = zlib.crc32(ctypes.string_at(addr, SIZE))
        assert libc.mprotect(addr, SIZE // 2, 0) == 0
        f.write(b"%d %d\n" % (crc, expected))
        f.flush()
    conn.close()
'''


def checksums(address: str) -> tuple[int, int]:
    sock, f = connect(address, 17000)
    with sock:
        f.write(b"CRC\n")
        f.flush()
        now, expected = map(int, f.readline().split())
    return now, expected


def test_postcopy_moves_memory_the_process_cannot_read(lab, tmp_path):
    lab.cm("run", "h1", "unreadable", "--publish", "17000:7000", "--",
           "python3", "-c", UNREADABLE_SERVER)
    now, expected = checksums(lab.public_address("h1"))
    assert now == expected
    lab.cm("migrate", "unreadable", "--to", "h2", "--mode", "postcopy",
           "--report", str(tmp_path / "report.json"), timeout=600)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ok"] is True and report["lazy_pages"] >= 64 * 256
    assert checksums(lab.public_address("h2")) == (expected, expected)
