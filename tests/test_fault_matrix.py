"""The fault matrix (tests/fault_matrix.py): a fault fired just before a phase of a real
migration of a Redis server with a live client; the outcome must be the one written down,
and whatever it is, the container runs in exactly one place with its data, and nothing of
the migration is left frozen, locked, mounted or running. `make test` runs a slice with a
fault in every phase; `make faults` runs every cell and writes docs/faults.md."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

import fault_matrix
from lab import Lab, cloudmig, connect, resp, running_lab
from redis_client import HeldClient

PORT = 16379
KEYS = 50_000            # ~60 MiB: the lazy transfer lasts ~3 s at the lab's WAN rate
VALUE_BYTES = 1000
WAN_RATE = "200mbit"
REDIS = ["redis-server", "--port", "6379", "--protected-mode", "no", "--save", "",
         "--appendonly", "no", "--enable-debug-command", "yes"]


MIGRATIONS_FS = "256m"   # the destination's migrations directory, a file system of its own


@pytest.fixture
def lab(tmp_path):
    with running_lab(tmp_path, 2, "--wan-rate", WAN_RATE) as running:
        # what the destination writes for a migration (images, CRIU's work files and logs)
        # lives on a small file system of its own, which the disk-full fault can fill
        where = running.state_dir / "hosts" / "h2" / "migrations"
        where.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={MIGRATIONS_FS},mode=0700", "tmpfs", str(where)],
                       check=True)
        try:
            yield running
        finally:
            subprocess.run(["umount", "-l", str(where)], check=False)


def _data_intact(address: str) -> bool:
    sock, f = connect(address, PORT)
    with sock:
        return resp(f, "DBSIZE") in (KEYS, KEYS + 1) and all(
            resp(f, "STRLEN", f"key:{i}") == VALUE_BYTES for i in (0, KEYS // 2, KEYS - 1))


def _where(lab: Lab) -> list[str]:
    """Hosts where a copy of the container runs (a process in its namespace)."""
    return [h for h in ("h1", "h2") if lab.pids_in_netns(f"{lab.lab_id}-c-{h}-db")]


def _left_behind(lab: Lab, home: str) -> list[str]:
    """What a finished migration must not leave: CRIU, migration files, a frozen or locked
    container, held packets, fault rules."""
    left = [f"process {p}" for p in lab.processes(str(lab.state_dir / "hosts"))
            if "criu" in p or "runc" in p]
    for h in ("h1", "h2"):
        mig = lab.state_dir / "hosts" / h / "migrations" / "db"
        if mig.exists():
            left.append(f"{mig} exists")
        nft = subprocess.run(["ip", "netns", "exec", f"{lab.lab_id}-{h}", "nft", "list", "tables"],
                             capture_output=True, text=True).stdout
        left += [f"{h}: nft {t}" for t in ("cmwan", "cmfault") if t in nft]
        rules = subprocess.run(["ip", "netns", "exec", f"{lab.lab_id}-{h}", "iptables", "-t", "mangle", "-S"],
                               capture_output=True, text=True).stdout
        if "NFQUEUE" in rules:
            left.append(f"{h}: NFQUEUE rule (held packets)")
    status = json.loads(subprocess.run(
        ["runc", "--root", str(lab.state_dir / "hosts" / home / "runc"), "state", "db"],
        capture_output=True, text=True).stdout or "{}").get("status")
    if status != "running":
        left.append(f"container on {home} is {status}")
    return left


def _outcome(lab: Lab, res, report: Path, fault: str, tmp_path: Path) -> str:
    if fault == "controller SIGKILL":
        assert res.returncode == -9, (res.returncode, res.stdout, res.stderr)
        resumed = lab.cm("migrate", "db", "--resume", "--report", str(tmp_path / "resumed.json"),
                         check=False, timeout=600)
        assert resumed.returncode == 0, resumed.stderr
        return "resumed: " + ("completed" if "completed:" in resumed.stdout else "rolled back")
    assert "Traceback" not in res.stderr, res.stderr
    if res.returncode == 0:
        return "completed"
    data = json.loads(report.read_text())
    if data.get("lost") and data["rolled_back"]:
        return "taken back"
    if data["rolled_back"] and data["state"] == "rolled_back":
        return "rolled back"
    if not data["rolled_back"] and data["state"] in ("new", "checked"):
        return "refused"          # by the preflight: nothing was changed
    return f"failed ({data['state']}): {data['error']}"


@pytest.mark.parametrize("fault,phase,mode", fault_matrix.cells(fault_matrix.FULL),
                         ids=lambda v: v.replace(" ", "-"))
def test_fault(lab, tmp_path, fault, phase, mode):
    expected = fault_matrix.expected(fault, phase, mode)
    lab.cm("run", "h1", "db", "--publish", f"{PORT}:6379", "--", *REDIS)
    sock, f = connect(lab.public_address("h1"), PORT)
    with sock:
        assert resp(f, "DEBUG", "POPULATE", str(KEYS), "key", str(VALUE_BYTES)) == "OK"
    # a request may wait out a whole outage (TCP keeps the connection; the client must too)
    client = HeldClient(lab.public_address("h1"), PORT,
                        request_timeout_s=180 if fault == "WAN down 60 s" else 30).start()
    report = tmp_path / "report.json"
    t0 = time.monotonic()
    try:
        client.wait_answers(20)
        env = dict(lab.env, CLOUDMIG_FAULTS=f"before-{phase}:{fault_matrix.FAULTS[fault]}")
        res = cloudmig("migrate", "db", "--to", "h2", "--mode", mode, "--report", str(report),
                       env=env, check=False, timeout=900)
        outcome = _outcome(lab, res, report, fault, tmp_path)
        seconds = time.monotonic() - t0
        before = client.answers
        if outcome != "taken back":       # through the rest of an outage, and its back-off
            client.wait_answers(before + 20, timeout_s=client.request_timeout_s + 30)
    finally:
        client.stop()
    home = "h2" if outcome.endswith("completed") else "h1"
    where = _where(lab)
    intact = _data_intact(lab.public_address("h1"))
    if fault.startswith("WAN down"):        # the outage may outlast the migration: let it end
        time.sleep(max(0.0, float(fault.split()[2]) - (time.monotonic() - t0)) + 5)
    left = _left_behind(lab, home)
    client_ok = not client.errors and client.answers >= before + 20
    survived = outcome == expected and where == [home] and intact and not left and \
        (client_ok or outcome == "taken back")
    if fault_matrix.RESULTS:
        with open(fault_matrix.RESULTS, "a") as fh:
            fh.write(json.dumps({"fault": fault, "phase": phase, "mode": mode, "expected": expected,
                                 "outcome": outcome, "survived": survived, "runs_on": where,
                                 "data_intact": intact, "client_kept": client_ok, "left": left,
                                 "seconds": round(seconds, 1),
                                 "client_longest_wait_s": round(client.longest_wait_s, 2)}) + "\n")
    assert outcome == expected, (outcome, res.stdout[-2000:], res.stderr[-2000:])
    assert where == [home], where
    assert intact, "data lost"
    assert not left, left
    if outcome != "taken back":     # its clients' connections are lost by design
        client.assert_healthy()
        assert client_ok, f"the client got no answers after the {outcome}"
