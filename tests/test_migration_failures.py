"""Failures before the destination resumes: the container goes on at the source, unchanged,
its client's connection intact, and nothing of it is left on the destination.

Failures are real (an agent killed, CRIU images broken, packets dropped), injected at a phase
boundary through CLOUDMIG_FAULT_HOOKS (see cloudmig/migration/engine.py)."""

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


def _block_syn_to_source() -> str:
    # on the destination, drop new TCP connections to the source's tunnel address: the
    # page server (and the reachability probe) become unreachable, the tunnel itself is fine
    nft = "nsenter --net=/run/netns/$CM_DST_NETNS nft"
    return (f"{nft} add table ip cmfault && "
            f"{nft} 'add chain ip cmfault out {{ type filter hook output priority 0; }}' && "
            f"{nft} add rule ip cmfault out ip daddr $CM_SRC_OVERLAY 'tcp flags & (syn|ack) == syn' drop")


def _break_images(lab: Lab) -> str:
    return f"rm -f {lab.state_dir}/hosts/$CM_DST/migrations/db/images/core-*.img"


CASES = {
    # at the freeze, the destination's runc restore is armed and its receivers listen: a
    # restarted agent must find and remove them
    "destination agent killed before the freeze": ("freeze", lambda lab: "kill -9 $CM_DST_AGENT_PID"),
    "destination agent killed before restore": ("restore", lambda lab: "kill -9 $CM_DST_AGENT_PID"),
    "restore fails on the destination": ("restore", _break_images),
    "page server unreachable (found by the probe)": ("prepare", lambda lab: _block_syn_to_source()),
    "page server unreachable (after the probe)": ("restore", lambda lab: _block_syn_to_source()),
    # CRIU refuses its options after cloudmig froze the container: it must be thawed
    "stop-and-copy dump fails on the source": (
        "freeze", lambda lab: f"echo no-such-option >> {lab.state_dir}/hosts/$CM_SRC/containers/db/criu.conf",
        "stopcopy"),
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
    phase, command, *rest = CASES[case]
    mode = rest[0] if rest else "postcopy"
    start_db(lab)
    service_ip = lab.ps()[0]["service_ip"]
    client = HeldClient(lab.public_address("h1"), PORT).start()
    report = tmp_path / "report.json"
    try:
        client.wait_answers(30)
        env = dict(lab.env, CLOUDMIG_FAULT_HOOKS=f"{phase}={command(lab)}")
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
    client.assert_healthy()
    assert client.answers >= before + 30, "the client got no answers after the rollback"
    runs_only_on(lab, "h1")
    check_data(lab.public_address("h1"))
    _destination_is_clean(lab, service_ip)
    # the dump was armed before the freeze: its gate is gone, CRIU's options a file again
    conf = lab.state_dir / "hosts" / "h1" / "containers" / "db" / "criu.conf"
    assert stat.S_ISREG(os.lstat(conf).st_mode) and "network-lock skip" in conf.read_text()
    assert not lab.processes("criu swrk"), lab.processes("criu swrk")
    # and the container can still be migrated afterwards
    if "agent killed" in case:
        lab.cm("migrate", "db", "--to", "h2", timeout=600)
        runs_only_on(lab, "h2")


def test_failed_move_back_to_a_forwarder_keeps_its_forward(lab, tmp_path):
    """h1 -> h2 succeeds (h1 forwards); h2 -> h1 then fails before the resume: h1 must go on
    forwarding its clients to h2, which keeps the container."""
    start_db(lab)
    client = HeldClient(lab.public_address("h1"), PORT).start()
    try:
        client.wait_answers(20)
        lab.cm("migrate", "db", "--to", "h2", timeout=600)
        before = client.answers
        client.wait_answers(before + 20)
        env = dict(lab.env, CLOUDMIG_FAULT_HOOKS="restore=" + _break_images(lab).replace("$CM_DST", "h1"))
        res = cloudmig("migrate", "db", "--to", "h1", env=env, check=False, timeout=600)
        before = client.answers
        client.wait_answers(before + 30)
    finally:
        client.stop()
    assert res.returncode != 0 and "rolling back" in res.stdout
    client.assert_healthy()
    assert client.answers >= before + 30
    runs_only_on(lab, "h2")
    check_data(lab.public_address("h1"))
    [row] = lab.ps()
    assert f"{lab.public_address('h1')}:{PORT}/tcp (forwarded)" in row["endpoints"]
