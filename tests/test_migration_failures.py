"""Failures before the destination resumes: the container goes on at the source, unchanged,
its client's connection intact, and nothing of it is left on the destination.

Failures are real (an agent killed, CRIU images broken, packets dropped), done by the hosts'
agents at the engine's named fault points (CLOUDMIG_FAULTS, see cloudmig/migration/faults.py)."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from lab import Lab, cloudmig, lab_fixture
from redis_client import HeldClient
from test_migration import PORT, check_data, runs_only_on, start_db


lab = lab_fixture(2)


CASES = {
    # at the dump, the destination's runc restore is armed and its receivers listen: a
    # restarted agent must find and remove them
    "destination agent killed before the freeze": "before-dump:destination:kill-agent",
    "destination agent killed before restore": "before-restore:destination:kill-agent",
    "restore fails on the destination": "before-restore:destination:break-images",
    # the destination drops new TCP connections to the source's tunnel address: the page
    # server (and the reachability probe) become unreachable, the tunnel itself is fine
    "page server unreachable (found by the probe)": "before-prepare:destination:block-tcp-to",
    "page server unreachable (after the probe)": "before-restore:destination:block-tcp-to",
    # CRIU refuses its options after cloudmig froze the container: it must be thawed
    "stop-and-copy dump fails on the source": ("before-dump:source:break-criu-conf", "stopcopy"),
    # a mapping's flags changed after the copy of smaps CRIU takes them from: the source's
    # check finds it and the destination's restore refuses to unlock the copy
    "mapping flags changed after their copy": "before-dump:source:stale-smaps-copy",
}


def _destination_is_clean(lab: Lab, service_ip: str) -> None:
    h2 = lab.state_dir / "hosts" / "h2"
    assert not (h2 / "containers" / "db").exists()
    assert not (h2 / "migrations" / "db").exists()
    assert f"{lab.lab_id}-c-h2-db" not in lab.netns()
    assert not lab.processes(f"{h2}/migrations/db")           # no lazy-pages daemon
    rules = subprocess.run(["ip", "-n", f"{lab.lab_id}-h2", "rule"], capture_output=True, text=True).stdout
    assert service_ip not in rules
    nft = subprocess.run(["ip", "netns", "exec", f"{lab.lab_id}-h2", "nft", "list", "ruleset"],
                         capture_output=True, text=True).stdout
    assert service_ip not in nft


@pytest.mark.parametrize("case", list(CASES))
def test_failure_before_resume_rolls_back(lab, tmp_path, case):
    fault, mode = CASES[case] if isinstance(CASES[case], tuple) else (CASES[case], "postcopy")
    sampled = start_db(lab)
    service_ip = lab.ps()[0]["service_ip"]
    client = HeldClient(lab.public_address("h1"), PORT).start()
    report = tmp_path / "report.json"
    try:
        client.wait_answers(30)
        env = dict(lab.env, CLOUDMIG_FAULTS=fault)
        res = cloudmig("migrate", "db", "--to", "h2", "--mode", mode, "--report", str(report), env=env,
                       check=False, timeout=600)
        before = client.answers
        client.wait_answers(before + 30)
    finally:
        client.stop()
    assert res.returncode != 0, res.stdout
    assert "Error:" in res.stderr and "Traceback" not in res.stderr
    data = json.loads(report.read_text())
    assert data["ok"] is False and data["rolled_back"] is True and data["error"]
    if "flags" in case:
        assert "changed the flags of a memory mapping" in data["error"] and " hg ->" in data["error"]
    client.assert_healthy()
    assert client.answers >= before + 30, "the client got no answers after the rollback"
    runs_only_on(lab, "h1")
    check_data(lab.public_address("h1"), sampled)
    _destination_is_clean(lab, service_ip)
    # the dump was armed before the freeze: its gate is gone, CRIU's options a file again
    conf = lab.state_dir / "hosts" / "h1" / "containers" / "db" / "criu.conf"
    assert stat.S_ISREG(os.lstat(conf).st_mode) and "network-lock skip" in conf.read_text()
    assert not lab.criu_processes(), lab.criu_processes()
    # and the container can still be migrated afterwards
    if "agent killed" in case:
        lab.cm("migrate", "db", "--to", "h2", timeout=600)
        runs_only_on(lab, "h2")


def test_failed_move_back_to_a_forwarder_keeps_its_forward(lab, tmp_path):
    """h1 -> h2 succeeds (h1 forwards); h2 -> h1 then fails before the resume: h1 must go on
    forwarding its clients to h2, which keeps the container."""
    sampled = start_db(lab)
    client = HeldClient(lab.public_address("h1"), PORT).start()
    try:
        client.wait_answers(20)
        lab.cm("migrate", "db", "--to", "h2", timeout=600)
        before = client.answers
        client.wait_answers(before + 20)
        env = dict(lab.env, CLOUDMIG_FAULTS="before-restore:destination:break-images")
        res = cloudmig("migrate", "db", "--to", "h1", env=env, check=False, timeout=600)
        before = client.answers
        client.wait_answers(before + 30)
    finally:
        client.stop()
    assert res.returncode != 0 and "rolling back" in res.stdout
    client.assert_healthy()
    assert client.answers >= before + 30
    runs_only_on(lab, "h2")
    check_data(lab.public_address("h1"), sampled)
    [row] = lab.ps()
    assert f"{lab.public_address('h1')}:{PORT}/tcp (forwarded)" in row["endpoints"]
