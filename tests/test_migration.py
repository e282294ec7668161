"""Live migration of a Debian-packaged server (redis-server, unmodified, `host` image) with a
few hundred MiB in memory, while a client holds one TCP connection through the source's
public address and issues requests continuously."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lab import Lab, connect, lab_fixture, resp
from redis_client import HeldClient

PORT = 16379
KEYS = 300_000
VALUE_BYTES = 1000       # ~340 MiB resident
REDIS = ["redis-server", "--port", "6379", "--protected-mode", "no", "--save", "",
         "--appendonly", "no", "--enable-debug-command", "yes"]


lab = lab_fixture(3)


MEMORY_LIMIT_MIB = 2048


def start_db(lab: Lab, host: str = "h1") -> None:
    lab.cm("run", host, "db", "--publish", f"{PORT}:6379", "--memory-mib", str(MEMORY_LIMIT_MIB),
           "--", *REDIS)
    sock, f = connect(lab.public_address(host), PORT)
    with sock:
        assert resp(f, "DEBUG", "POPULATE", str(KEYS), "key", str(VALUE_BYTES)) == "OK"
        assert resp(f, "DBSIZE") == KEYS


def check_data(address: str) -> None:
    sock, f = connect(address, PORT)
    with sock:
        assert resp(f, "DBSIZE") in (KEYS, KEYS + 1)   # + the held client's counter
        for i in (0, 1, KEYS // 2, KEYS - 1):
            assert resp(f, "STRLEN", f"key:{i}") == VALUE_BYTES


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
    masked_dirs_stay_hidden(lab.pids_in_netns(f"{lab.lab_id}-c-{host}-db")[0])


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
    start_db(lab)
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
    assert names[:7] == ["preflight", "prepare", "arm", "hold", "dump", "sync", "restore"]
    assert report["state"] == "done" and report["control_round_trips_in_freeze"] > 0
    assert report["held_packets"] > 0       # the client's requests waited through the freeze
    if mode == "postcopy":
        assert report["lazy_pages"] > 50_000
        assert report["faulted_pages"] + report["pushed_pages"] == report["lazy_pages"]
        assert report["images_bytes"] < 50 * 2**20      # memory did not travel in the freeze
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
    check_data(lab.public_address("h1"))    # through the forward
    check_data(lab.public_address("h2"))    # at the new home
    [row] = lab.ps()
    assert f"{lab.public_address('h1')}:{PORT}/tcp (forwarded)" in row["endpoints"]
    print(f"{mode}: freeze {report['freeze_ms']:.0f} ms, client's longest wait "
          f"{client.longest_wait_s * 1000:.0f} ms, {client.answers} answers")


def test_migrate_again_and_back(lab, tmp_path):
    start_db(lab)
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
        check_data(lab.public_address(h))


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
