"""A controller killed (SIGKILL) in the middle of a migration never leaves it half done:
`cloudmig ps` shows it interrupted, `cloudmig migrate --resume NAME` (or `cloudmig recover`)
finishes it when the destination had resumed the container, and rolls it back otherwise.
Each case keeps a live client's connection and checks the data and what is left behind."""

from __future__ import annotations

import json

import pytest

from lab import cloudmig, lab_fixture
from redis_client import HeldClient
from test_migration import PORT, check_data, runs_only_on, start_db
from test_migration_failures import _destination_is_clean


lab = lab_fixture(2)


CASES = {
    # the case: switched, pages still moving, the source's frozen copy and CRIU left
    # (controller kills at other phases, both ways: the fault matrix)
    "killed after the switch (post-copy): completed": ("after-switch", "postcopy", "h2", "completed"),
    # killed inside the freeze: the source is frozen and dumped, the destination armed
    "killed after the dump (post-copy): rolled back": ("after-dump", "postcopy", "h1", "rolled back"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_controller_killed_then_resumed(lab, tmp_path, case):
    point, mode, ends_on, outcome = CASES[case]
    sampled = start_db(lab)
    service_ip = lab.ps()[0]["service_ip"]
    client = HeldClient(lab.public_address("h1"), PORT).start()
    try:
        client.wait_answers(20)
        env = dict(lab.env, CLOUDMIG_FAULTS=f"{point}:controller:kill")
        res = cloudmig("migrate", "db", "--to", "h2", "--mode", mode, env=env, check=False, timeout=600)
        assert res.returncode == -9, (res.returncode, res.stdout, res.stderr)

        [row] = lab.ps()
        assert row["migration"]["status"] == "interrupted", row
        assert (row["migration"]["source"], row["migration"]["destination"]) == ("h1", "h2")
        shown = cloudmig("ps", env=dict(lab.env, COLUMNS="250")).stdout
        assert "migration interrupted: h1 -> h2" in shown, shown
        # a new migration is refused until this one is ended
        again = lab.cm("migrate", "db", "--to", "h2", check=False)
        assert again.returncode != 0 and "--resume db" in again.stderr, again.stderr

        report = tmp_path / "resumed.json"
        res = lab.cm("migrate", "db", "--resume", "--report", str(report), timeout=600)
        assert f"{outcome}: db runs on {ends_on}" in res.stdout, res.stdout
        before = client.answers
        client.wait_answers(before + 30)
    finally:
        client.stop()
    client.assert_healthy()
    assert client.answers >= before + 30, "the client got no answers after the recovery"
    data = json.loads(report.read_text())
    assert data["ok"] is (outcome == "completed") and data["state"] in ("done", "rolled_back")
    runs_only_on(lab, ends_on)
    [row] = lab.ps()
    assert row["migration"] is None
    check_data(lab.public_address("h1"), sampled)
    assert not lab.criu_processes(), lab.criu_processes()
    if ends_on == "h1":
        _destination_is_clean(lab, service_ip)
    # and it moves on as usual: to the other host and back
    other = "h1" if ends_on == "h2" else "h2"
    lab.cm("migrate", "db", "--to", other, timeout=600)
    runs_only_on(lab, other)
    check_data(lab.public_address("h1"), sampled)


def test_resume_refuses_bad_input(lab):
    res = lab.cm("migrate", "nosuch", "--resume", check=False)
    assert res.returncode != 0 and "No migration of 'nosuch' is on record" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    start_db(lab)
    lab.cm("migrate", "db", "--to", "h2", timeout=600)
    res = lab.cm("migrate", "db", "--resume", check=False)
    assert res.returncode != 0 and "is finished (done)" in res.stderr, res.stderr
    res = lab.cm("migrate", "db", "--resume", "--to", "h1", check=False)
    assert res.returncode != 0 and "leave out" in res.stderr
    assert "no interrupted migration" in lab.cm("recover").stdout
    runs_only_on(lab, "h2")


def test_source_lost_after_the_resume(lab, tmp_path):
    """The source host dies while pages are still moving (its container, CRIU and agent
    killed): the destination's copy is stopped instead of running on with memory it never
    got, the error says what was lost, and the inventory says lost; `rm` then clears it."""
    start_db(lab)
    report = tmp_path / "report.json"
    env = dict(lab.env, CLOUDMIG_FAULTS="before-lazy:source:kill-host")
    res = cloudmig("migrate", "db", "--to", "h2", "--report", str(report), env=env, check=False, timeout=600)
    assert res.returncode == 9, (res.returncode, res.stdout, res.stderr)
    said = " ".join(res.stderr.split())
    assert "lost its memory before all of it arrived" in said and "pages never arrived" in said, said
    assert "db is lost" in said, said
    data = json.loads(report.read_text())
    assert data["ok"] is False and data["state"] == "lost" and data["lost"]
    [row] = lab.ps()
    assert row["state"] == "lost" and row["migration"] is None
    for h in ("h1", "h2"):                    # no copy runs anywhere, nothing of it is left
        assert not lab.pids_in_netns(f"{lab.lab_id}-c-{h}-db")
        assert not (lab.state_dir / "hosts" / h / "containers" / "db").exists()
    assert not lab.criu_processes()
    lab.cm("rm", "db")
    assert lab.ps() == []
