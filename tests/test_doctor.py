"""`cloudmig doctor` on this (bootstrapped) machine, and on broken set-ups it must catch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab import cloudmig

PIPE_MAX = Path("/proc/sys/fs/pipe-max-size")
CT_BUCKETS = Path("/proc/sys/net/netfilter/nf_conntrack_buckets")


def _checks(res):
    data = json.loads(res.stdout)
    return data, {c["name"]: c for c in data["checks"]}


def test_doctor_passes_after_bootstrap():
    res = cloudmig("doctor", "--json")
    data, checks = _checks(res)
    assert data["ok"] is True
    for name in ("userfaultfd", "checkpoint-restore", "namespaces", "tun", "criu", "criu-check",
                 "lazy-pages", "tcp-repair", "runc", "cgroups", "wireguard", "nftables",
                 "pipe-max-size", "conntrack-buckets", "cgroup-favordynmods"):
        assert checks[name]["status"] == "pass", checks[name]
    # this kernel has no soft-dirty tracking: reported, not required
    assert checks["soft-dirty"]["required"] is False


def test_doctor_human_output_has_one_line_per_check():
    res = cloudmig("doctor")
    assert "criu" in res.stdout and "ready for cloudmig" in res.stdout


def test_old_criu_is_a_failure_with_a_fix(tmp_path):
    fake = tmp_path / "criu"
    fake.write_text("#!/bin/sh\necho 'Version: 4.1.1'\n")
    fake.chmod(0o755)
    res = cloudmig("doctor", "--json", env={"CLOUDMIG_CRIU": str(fake)}, check=False)
    assert res.returncode == 1
    data, checks = _checks(res)
    assert data["ok"] is False
    assert checks["criu"]["status"] == "fail"
    assert "4.1.1" in checks["criu"]["detail"]
    assert "bootstrap" in checks["criu"]["hint"]


def test_missing_criu_is_a_failure(tmp_path):
    res = cloudmig("doctor", env={"CLOUDMIG_CRIU": str(tmp_path / "nope")}, check=False)
    assert res.returncode == 1
    assert "criu not found" in res.stdout
    assert "fix:" in res.stdout


def test_missing_wireguard_is_a_failure():
    if Path("/sys/module/wireguard").exists():
        pytest.skip("this kernel has the WireGuard module, wireguard-go is not needed")
    res = cloudmig("doctor", "--json", env={"CLOUDMIG_WIREGUARD_GO": ""}, check=False)
    assert res.returncode == 1
    _, checks = _checks(res)
    assert checks["wireguard"]["status"] == "fail"
    assert "wireguard-go" in checks["wireguard"]["hint"]


def _doctor_with(setting: Path, value: str):
    """`cloudmig doctor --json` with a kernel setting changed for the run; restored after."""
    before = setting.read_text().strip()
    try:
        setting.write_text(value)
        return cloudmig("doctor", "--json", check=False), before
    finally:
        setting.write_text(before)


def test_low_pipe_max_size_is_a_failure():
    res, before = _doctor_with(PIPE_MAX, "1048576")
    assert res.returncode == 1
    _, checks = _checks(res)
    assert checks["pipe-max-size"]["status"] == "fail"
    assert "sysctl -w fs.pipe-max-size" in checks["pipe-max-size"]["hint"]
    assert PIPE_MAX.read_text().strip() == before


def test_a_big_conntrack_hash_is_a_warning_not_a_failure():
    res, before = _doctor_with(CT_BUCKETS, "262144")
    assert res.returncode == 0
    _, checks = _checks(res)
    assert checks["conntrack-buckets"]["status"] == "warn"
    assert "nf_conntrack_buckets=16384" in checks["conntrack-buckets"]["hint"]
    assert CT_BUCKETS.read_text().strip() == before


def test_a_long_lived_agent_asks_criu_once_while_its_checks_pass(tmp_path, monkeypatch):
    """The agent answers every migration's preflight with these checks: CRIU runs again only
    when its binary changes, and a failing CRIU is looked at afresh each time."""
    from cloudmig import doctor

    calls = tmp_path / "calls"
    fake = tmp_path / "criu"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\necho 'Version: 4.2.1'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CLOUDMIG_CRIU", str(fake))

    first = doctor.check_criu()
    ran = len(calls.read_text().splitlines())
    assert ran == 5 and all(c.status != doctor.FAIL for c in first)     # version, check, 3 features
    assert [c.detail for c in doctor.check_criu()] == [c.detail for c in first]
    assert len(calls.read_text().splitlines()) == ran                   # kept, not run again

    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\necho 'Version: 4.1.1'\n")   # replaced
    assert doctor.check_criu()[0].status == doctor.FAIL
    assert doctor.check_criu()[0].status == doctor.FAIL
    assert len(calls.read_text().splitlines()) == ran + 2               # a failure is not kept
