"""Migrations between hosts reached over SSH and lab hosts: ssh->ssh, ssh->lab, lab->ssh, with
one client holding its TCP connection through the first host's public address all along.

Two lab hosts run a real sshd each and are adopted as s1 and s2 (agents of their own, with
their own directories); h3 stays a lab host reached on its unix socket. Each migration must
use one SSH session per host for everything it does (the persistent channel): sshd's log
counts the sessions it accepted.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from busybox_image import HTTPD_COMMAND, http_get, make_busybox_image
from lab import VENV_BIN, Lab, cloudmig, connect, new_lab_id, resp
from redis_client import HeldClient, check_data, digests
from cloudmig.bench.sshd import Sshd

PORT = 16380
LAB_HOST_OF = {"s1": "h1", "s2": "h2"}      # the lab host each adopted host runs in
KEYS = 50_000
VALUE_BYTES = 1000
REDIS = ["redis-server", "--port", "6379", "--protected-mode", "no", "--save", "", "--appendonly", "no",
         "--enable-debug-command", "yes"]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """The hosts, shared by this module's tests (each works on a container of its own):
    (lab, {name: Sshd}, the directory below which the adopted hosts keep their files)."""
    base = tmp_path_factory.mktemp("mixed")
    lab = Lab(base / "state", new_lab_id())
    sshds: dict[str, Sshd] = {}
    try:
        lab.cm("lab", "up", "--hosts", "3")
        for lab_host, name in (("h1", "s1"), ("h2", "s2")):
            address = lab.public_address(lab_host)
            sshd = Sshd(base / f"sshd-{name}", netns=f"{lab.lab_id}-{lab_host}", address=address)
            sshd.start()
            sshds[name] = sshd
            lab.cm("host", "add", name, "--ssh", f"root@{address}", "--port", str(sshd.port),
                   "--identity", str(sshd.client_key), "--option", f"remote_venv={VENV_BIN.parent}",
                   "--option", f"remote_dir={base / ('remote-' + name)}", "--option", "agent_start=nohup",
                   "--option", f"cgroup_parent=/cloudmig/{lab.lab_id}-{name}",
                   "--option", f"netns_prefix={lab.lab_id}-c-{name}", timeout=600)
        yield lab, sshds, base
    finally:
        for name in ("s1", "s2"):
            if name in lab.inventory().get("hosts", {}):
                lab.cm("host", "destroy", name, check=False, timeout=300)
        for sshd in sshds.values():
            sshd.stop()
        lab.cm("lab", "down", check=False)
        for line in lab.processes(str(base / "remote-")):
            os.kill(int(line.split(":")[0]), 9)
    assert not lab.processes(str(base / "remote-")), "an adopted host's agent survived"
    assert not lab.leftovers(), lab.leftovers()


def _sessions(sshd: Sshd) -> int:
    return sshd.log.read_text().count("Accepted publickey")


def _row(lab: Lab, name: str) -> dict:
    [row] = [r for r in lab.ps() if r["name"] == name]
    return row


def test_ssh_and_lab_hosts_migrate_both_ways(mixed, tmp_path):
    lab, sshds, _base = mixed
    lab.cm("run", "s1", "db", "--publish", f"{PORT}:6379", "--", *REDIS)
    entry = lab.public_address("s1")
    sock, f = connect(entry, PORT)
    with sock:
        assert resp(f, "DEBUG", "POPULATE", str(KEYS), "key", str(VALUE_BYTES)) == "OK"
    sampled = digests(entry, PORT, KEYS)     # compared byte for byte after the moves
    client = HeldClient(entry, PORT).start()
    reports = {}
    try:
        client.wait_answers(30)
        for dst in ("s2", "h3", "s1"):
            row = _row(lab, "db")
            forwarders = {f["host"] for f in row["forwards"]}
            before = {name: _sessions(s) for name, s in sshds.items()}
            out = tmp_path / f"to-{dst}.json"
            lab.cm("migrate", "db", "--to", dst, "--report", str(out), timeout=600)
            reports[dst] = json.loads(out.read_text())
            # one SSH session per adopted host the migration touched, for all its calls
            # (source, destination, forwarders re-pointed at the switch; tunnels included)
            touched = ({reports[dst]["source"], dst} | forwarders) & set(sshds)
            opened = {name: _sessions(s) - before[name] for name, s in sshds.items()}
            assert opened == {name: int(name in touched) for name in sshds}, (dst, opened)
            # the source's hold rules are gone once the migration returned (they go after the
            # switch, off its path, in the source agent: on s1 and s2 an adopted one)
            source_ns = f"{lab.lab_id}-{LAB_HOST_OF.get(reports[dst]['source'], reports[dst]['source'])}"
            rules = subprocess.run(["ip", "netns", "exec", source_ns, "iptables", "-t", "mangle", "-S"],
                                   capture_output=True, text=True, check=True).stdout
            assert "cloudmig hold" not in rules, (dst, rules)
            answers = client.answers
            client.wait_answers(answers + 30)
            row = _row(lab, "db")
            assert row["host"] == dst and row["state"] == "running"
    finally:
        client.stop()
    client.assert_healthy()
    assert client.peer[0] == entry
    for dst, rep in reports.items():
        assert rep["ok"] and rep["state"] == "done", rep
        assert 0 < rep["control_round_trips_in_freeze"] <= 8, rep["control_round_trips_in_freeze"]
        assert rep["lazy_pages"] > 5000
        # sent ahead into the destination's own store, and installed there from it
        assert rep["hot_pages"]["installed"] > 0, (dst, rep["hot_pages"])
        assert rep["smaps"]["used"] + rep["smaps"]["read"] == 1, (dst, rep["smaps"])
    for host in ("s1", "s2", "h3"):
        check_data(lab.public_address(host), PORT, KEYS, VALUE_BYTES, sampled)


def test_an_image_whose_file_is_gone_moves_between_separate_stores(mixed, tmp_path):
    """s1 and s2 keep layers in stores of their own (their agents' directories), h3 in the
    lab's: each move sends the destination the layer it lacks, through the tunnel."""
    lab, _sshds, base = mixed
    image = make_busybox_image(tmp_path / "web.tar", page="from a file that is gone\n")
    lab.cm("run", "s1", "web", "--image", str(image), "--publish", "18083:8080", "--", *HTTPD_COMMAND)
    image.unlink()
    [digest] = lab.inventory()["containers"]["web"]["layers"]
    stores = {"s1": base / "remote-s1" / "host" / "layers", "s2": base / "remote-s2" / "host" / "layers",
              "h3": lab.state_dir / "hosts" / "h3" / "layers"}
    entry = lab.public_address("s1")
    for dst in ("s2", "h3"):
        assert not (stores[dst] / digest[len("sha256:"):]).exists()
        out = tmp_path / f"web-to-{dst}.json"
        lab.cm("migrate", "web", "--to", dst, "--report", str(out), timeout=600)
        assert json.loads(out.read_text())["layers_bytes"] > 0
        assert (stores[dst] / digest[len("sha256:"):] / "tree" / "www" / "index.html").exists()
        assert http_get(entry, 18083) == "from a file that is gone\n"
    row = _row(lab, "web")
    assert row["host"] == "h3" and row["state"] == "running"


def test_a_restore_that_fails_on_an_adopted_host_rolls_back_to_the_adopted_source(mixed, tmp_path):
    """Post-copy from s1 to s2, whose restore fails (its CRIU core images gone). The restore
    connects to s2's lazy-pages daemon before it reads them, and the daemon at once to s1's
    page server across the tunnel: s1's page server outlives that connection, and the
    rollback ends it with PS_IOV_CLOSE, so the
    container runs on at s1 as it was, its client still connected. Nothing of CRIU's stays
    on either host, whose files are their own."""
    lab, _sshds, base = mixed
    port = PORT + 1
    lab.cm("run", "s1", "kv", "--publish", f"{port}:6379", "--", *REDIS)
    entry = lab.public_address("s1")
    sock, f = connect(entry, port)
    with sock:
        assert resp(f, "DEBUG", "POPULATE", "5000", "key", str(VALUE_BYTES)) == "OK"
    sampled = digests(entry, port, 5000)
    client = HeldClient(entry, port).start()
    out = tmp_path / "report.json"
    try:
        client.wait_answers(30)
        res = cloudmig("migrate", "kv", "--to", "s2", "--report", str(out), timeout=600, check=False,
                       env={**lab.env, "CLOUDMIG_FAULTS": "before-restore:destination:break-images"})
        answers = client.answers
        client.wait_answers(answers + 30)
    finally:
        client.stop()
    assert res.returncode != 0 and "Error:" in res.stderr and "Traceback" not in res.stderr, res.stderr
    report = json.loads(out.read_text())
    assert report["ok"] is False and report["rolled_back"] is True, report
    client.assert_healthy()
    row = _row(lab, "kv")
    assert row["host"] == "s1" and row["state"] == "running"
    check_data(entry, port, 5000, VALUE_BYTES, sampled)
    for name in ("s1", "s2"):
        assert not [p for p in lab.processes(str(base / f"remote-{name}")) if "criu" in p], name
