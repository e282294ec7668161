"""Plans (`cloudmig plan ...`) on real lab hosts: small redis-servers (the `host` image), each
with a client holding one TCP connection through its source's public address, moved by DBOS
workflows in waves, within limits checked from the plan's own records; a controller SIGKILLed
mid-wave and resumed; every on-failure policy; bad plans refused."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import signal
import socket
from pathlib import Path

from lab import CLOUDMIG, Lab, cloudmig, connect, lab_fixture, resp
from postgres_server import postgres_server
from redis_client import HeldClient

REDIS = ["redis-server", "--port", "6379", "--protected-mode", "no", "--save", "", "--appendonly", "no",
         "--enable-debug-command", "yes"]

lab3 = lab_fixture(3)
lab2 = lab_fixture(2)


def start(lab: Lab, host: str, name: str, port: int, *labels: str) -> None:
    args = [a for label in labels for a in ("--label", label)]
    lab.cm("run", host, name, "--publish", f"{port}:6379", *args, "--", *REDIS)
    sock, f = connect(lab.public_address(host), port)
    with sock:
        assert resp(f, "DEBUG", "POPULATE", "1000", "key", "100") == "OK"     # what HeldClient reads


@contextlib.contextmanager
def held_clients(endpoints: dict[str, tuple[str, int]]):
    """A client per container, each on one TCP connection, answering before the block and
    still answering after it; every answer in order and none missing."""
    clients = {n: HeldClient(address, port).start() for n, (address, port) in endpoints.items()}
    try:
        for c in clients.values():
            c.wait_answers(10)
        yield clients
        for c in clients.values():
            before = c.answers
            c.wait_answers(before + 10)
            assert c.answers >= before + 10, f"no answers after the plan: {c.errors[:3]}"
    finally:
        for c in clients.values():
            c.stop()
    for c in clients.values():
        c.assert_healthy()


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def status(lab: Lab, name: str) -> dict:
    [row] = json.loads(lab.cm("plan", "status", name, "--json").stdout)
    return row


def hosts_of(lab: Lab) -> dict[str, str]:
    return {r["name"]: r["host"] for r in lab.ps() if r["state"] == "running"}


def most_at_once(runs: list[dict], key: str | None = None) -> int:
    """From the plan's records: the most migrations whose [start, end] overlapped."""
    groups: dict = {}
    for r in runs:
        groups.setdefault(r[key] if key else None, []).extend([(r["started_at"], 1), (r["ended_at"], -1)])
    best = 0
    for points in groups.values():
        n = 0
        for _, d in sorted(points):
            n += d
            best = max(best, n)
    return best


PLAN = """\
name: exit-h1
limits: {total: 2, per_destination: 2}
groups:
  web: {labels: {tier: web}}
waves:
  - name: data
    moves:
      - select: {containers: [db]}
        to: [h3]
        health: {tcp: 6379}
      - select: {containers: [cache]}
        to: [h3]
        after: [db]              # a dependency inside the wave
  - name: web
    moves:
      - select: {group: web}
        to: [h2, h3]
        health: {command: [sh, -c, 'test -n "$CLOUDMIG_ADDRESS"']}
  - name: api
    moves:
      - select: {hosts: [h2]}    # what runs on h2 when the plan is applied
        to: [h1]
        after: [web]
"""


def test_plan_in_three_waves_within_its_limits(lab3, tmp_path):
    ports = {"db": 16391, "cache": 16392, "web1": 16393, "web2": 16394, "api1": 16395, "api2": 16396}
    for name in ("db", "cache", "web1", "web2"):
        start(lab3, "h1", name, ports[name], *(["tier=web"] if name.startswith("web") else []))
    for name in ("api1", "api2"):
        start(lab3, "h2", name, ports[name], "tier=api")
    assert "tier=web" in lab3.cm("ps").stdout
    plan = write(tmp_path, "exit", PLAN)
    dry = lab3.cm("plan", "apply", str(plan), "--dry-run", "--tunnel-mibps", "50").stdout
    assert "wave 1 data" in dry and "wave 3 api" in dry and "cache: h1 -> h3" in dry, dry
    # no tunnel yet, and the dry run brings none up: the rate is the one given
    assert "tunnel h1 -> h3: 50 MiB/s, assumed (--tunnel-mibps; no tunnel yet)" in dry, dry
    assert lab3.cm("tunnel", "status", "--json").stdout.strip() in ("[]", "")
    assert not (lab3.state_dir / "plans" / "exit-h1").exists()          # the dry run changed nothing
    with held_clients({n: (lab3.public_address("h2" if n.startswith("api") else "h1"), p)
                       for n, p in ports.items()}):
        lab3.cm("plan", "apply", str(plan), timeout=300)
    where = hosts_of(lab3)
    assert where["db"] == where["cache"] == "h3"
    assert {where["web1"], where["web2"]} <= {"h2", "h3"}
    assert where["api1"] == where["api2"] == "h1"
    row = status(lab3, "exit-h1")
    assert row["state"] == "done"
    runs = row["migrations"]
    assert sorted(r["container"] for r in runs) == sorted(ports)         # each moved exactly once
    assert all(r["ok"] and r["kind"] == "move" for r in runs)
    for r in runs:
        assert r["destination"] == where[r["container"]]
    assert most_at_once(runs) <= 2
    assert most_at_once(runs, "destination") <= 2
    by = {r["container"]: r for r in runs}
    assert by["cache"]["started_at"] >= by["db"]["ended_at"]              # after its dependency
    waves = [[by[n] for n in names] for names in (("db", "cache"), ("web1", "web2"), ("api1", "api2"))]
    for earlier, later in zip(waves, waves[1:]):
        assert min(r["started_at"] for r in later) >= max(r["ended_at"] for r in earlier)
    report = lab3.state_dir / "plans" / "exit-h1"
    rep = json.loads((report / "report.json").read_text())
    assert rep["state"] == "done" and all(c["freeze_ms"] > 0 for c in rep["containers"])
    assert all(isinstance(c["held_ms"], float) and c["held_ms"] > 0 for c in rep["containers"])
    md = (report / "report.md").read_text()
    row_db = next(ln for ln in md.splitlines() if ln.startswith("| 1 | db | h1 | h3 | done |"))
    assert row_db.split("|")[7].strip() == f"{next(c for c in rep['containers'] if c['container'] == 'db')['held_ms']:.0f} ms", md
    assert (report / "timeline.png").stat().st_size > 0
    # applied again: refused, the plan is done (nothing moves)
    again = lab3.cm("plan", "resume", "exit-h1")
    assert "done" in again.stdout and len(status(lab3, "exit-h1")["migrations"]) == 6


def one_by_one(tmp_path: Path, name: str, source: str, destination: str) -> Path:
    """A plan of one wave: everything on ``source`` to ``destination``, one at a time."""
    return write(tmp_path, name, f"name: {name}\nlimits: {{total: 1}}\nwaves:\n  - name: all\n    moves:\n"
                                 f"      - select: {{hosts: [{source}]}}\n        to: [{destination}]\n")


def killed(lab: Lab, plan: Path, name: str, fault: dict[str, str]) -> None:
    """`plan apply` SIGKILLed by ``fault``; the plan shows as interrupted."""
    res = cloudmig("plan", "apply", str(plan), check=False, timeout=300, env={**lab.env, **fault})
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert status(lab, name)["state"] == "interrupted"


def test_controller_killed_mid_wave_then_resumed(lab2, tmp_path):
    ports = {"k1": 16381, "k2": 16382, "k3": 16383}
    for name, port in ports.items():
        start(lab2, "h1", name, port)
    plan = one_by_one(tmp_path, "crash", "h1", "h2")
    # none lost, none left frozen or locked: each client still answers afterwards
    with held_clients({n: (lab2.public_address("h1"), p) for n, p in ports.items()}):
        # killed once k2 has moved and before DBOS recorded it: k3 not started yet
        killed(lab2, plan, "crash", {"CLOUDMIG_PLAN_FAULTS": "after-move:k2:kill"})
        assert {c["container"]: c["state"] for c in status(lab2, "crash")["containers"]}["k3"] in ("pending", "queued")
        assert hosts_of(lab2) == {"k1": "h2", "k2": "h2", "k3": "h1"}
        lab2.cm("plan", "resume", timeout=300)           # every interrupted plan
    assert hosts_of(lab2) == {"k1": "h2", "k2": "h2", "k3": "h2"}
    row = status(lab2, "crash")
    assert row["state"] == "done"
    assert sorted(r["container"] for r in row["migrations"]) == ["k1", "k2", "k3"]   # k2 not moved twice
    states = {c["container"]: c["state"] for c in row["containers"]}
    assert states == {"k1": "done", "k2": "already", "k3": "done"}
    assert "no interrupted plan" in lab2.cm("plan", "resume").stdout

    # back to h1, aborted while the first migration is in flight (it waits for the abort,
    # however fast it would be): it finishes, nothing else starts; resumed, the plan goes on
    back = one_by_one(tmp_path, "back", "h2", "h1")
    # h1 and h2 have a tunnel now: the dry run measures its rate (a short probe through it)
    dry = lab2.cm("plan", "apply", str(back), "--dry-run").stdout
    line = next(ln for ln in dry.splitlines() if ln.startswith("tunnel h2 -> h1: "))
    assert line.endswith("measured (1 s probe)") and float(line.split()[4]) > 0, dry
    wait_abort = ",".join(f"before-move:{n}:wait-abort" for n in ports)
    with held_clients({n: (lab2.public_address("h1"), p) for n, p in ports.items()}):
        proc = subprocess.Popen([CLOUDMIG, "plan", "apply", str(back)],
                                env={**os.environ, **lab2.env, "CLOUDMIG_PLAN_FAULTS": wait_abort},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for _ in range(600):
                rows = json.loads(lab2.cm("plan", "status", "--json").stdout)
                if any(c["state"] == "moving" for r in rows if r["plan"] == "back" for c in r["containers"]):
                    break
                time.sleep(0.05)
            lab2.cm("plan", "abort", "back")
            out, err = proc.communicate(timeout=300)
        finally:
            proc.kill()
        assert proc.returncode == 1, (out, err)
        row = status(lab2, "back")
        assert row["state"] == "aborted"
        assert len(row["migrations"]) == 1 and row["migrations"][0]["ok"]
        assert sorted(c["state"] for c in row["containers"]) == ["aborted", "aborted", "done"]
        lab2.cm("plan", "resume", "back", timeout=300)
    assert set(hosts_of(lab2).values()) == {"h1"}
    row = status(lab2, "back")
    assert row["state"] == "done" and sorted(r["container"] for r in row["migrations"]) == ["k1", "k2", "k3"]

    # killed inside a migration, while k1 is frozen: resumed, the engine's recovery rolls that
    # migration back (k1 thawed on h1), then the plan moves it and the others
    again = one_by_one(tmp_path, "again", "h1", "h2")
    with held_clients({n: (lab2.public_address("h1"), p) for n, p in ports.items()}):
        killed(lab2, again, "again", {"CLOUDMIG_FAULTS": "after-dump:controller:kill"})
        lab2.cm("plan", "resume", "again", timeout=300)
    assert set(hosts_of(lab2).values()) == {"h2"}
    runs = status(lab2, "again")["migrations"]
    assert sorted((r["container"], r["ok"]) for r in runs) == [("k1", False), ("k1", True), ("k2", True),
                                                               ("k3", True)]


def test_each_on_failure_policy(lab2, tmp_path):
    for name, host, port in (("a", "h1", 16371), ("b", "h1", 16372), ("c", "h1", 16373), ("d", "h2", 16374)):
        start(lab2, host, name, port)
    start(lab2, "h2", "block-c", 16373)          # c's port is taken on h2: c cannot move there
    start(lab2, "h1", "block-d", 16374)          # and d's on h1

    def plan(name: str, policy: str, waves: str) -> Path:
        return write(tmp_path, name, f"name: {name}\non_failure: {policy}\nwaves:\n{waves}")

    stop = plan("p-stop", "stop", "  - name: one\n    moves:\n"
                "      - {select: {containers: [a]}, to: [h2]}\n"
                "      - {select: {containers: [c]}, to: [h2], after: [a]}\n"
                "  - name: two\n    moves:\n      - {select: {containers: [b]}, to: [h2]}\n")
    res = lab2.cm("plan", "apply", str(stop), check=False)
    assert res.returncode == 1
    row = status(lab2, "p-stop")
    states = {c["container"]: c["state"] for c in row["containers"]}
    assert row["state"] == "failed" and states["c"] == "failed" and states["b"] == "pending"
    assert "16373/tcp is already published on h2" in {c["container"]: c["detail"] for c in row["containers"]}["c"]
    assert hosts_of(lab2)["a"] == "h2" and hosts_of(lab2)["b"] == "h1" and hosts_of(lab2)["c"] == "h1"

    cont = plan("p-continue", "continue", "  - name: one\n    moves:\n"
                "      - {select: {containers: [c]}, to: [h2]}\n"
                "  - name: two\n    moves:\n      - {select: {containers: [b]}, to: [h2]}\n")
    res = lab2.cm("plan", "apply", str(cont), check=False)
    assert res.returncode == 1 and status(lab2, "p-continue")["state"] == "partial"
    assert hosts_of(lab2)["b"] == "h2" and hosts_of(lab2)["c"] == "h1"

    back = plan("p-back", "rollback-wave", "  - name: one\n    moves:\n"
                "      - {select: {containers: [a, b]}, to: [h1]}\n"
                "      - {select: {containers: [d]}, to: [h1], after: [a, b]}\n")
    res = lab2.cm("plan", "apply", str(back), check=False)
    assert res.returncode == 1
    row = status(lab2, "p-back")
    assert row["state"] == "failed"
    kinds = sorted((r["container"], r["kind"], r["ok"]) for r in row["migrations"])
    assert kinds == [("a", "back", True), ("a", "move", True), ("b", "back", True), ("b", "move", True),
                     ("d", "move", False)], [(r["container"], r["kind"], r["error"]) for r in row["migrations"]]
    where = hosts_of(lab2)
    assert (where["a"], where["b"], where["d"]) == ("h2", "h2", "h2")     # moved back where they were


def test_bad_plans_refused_with_line_and_reason(lab2, tmp_path):
    start(lab2, "h1", "x", 16361)
    start(lab2, "h1", "y", 16362)
    head = "name: bad\n"
    cases = {
        "unknown host": (head + "waves:\n  - name: w\n    moves:\n      - select: {containers: [x]}\n"
                         "        to: [h9]\n", ":6: unknown host 'h9'"),
        "unknown key": (head + "waves:\n  - name: w\n    moves:\n      - select: {containers: [x]}\n"
                        "        to: [h2]\n        colour: red\n", ":7: unknown key 'colour'"),
        "cycle": (head + "waves:\n  - name: w\n    moves:\n      - select: {containers: [x]}\n        to: [h2]\n"
                  "        after: [y]\n      - select: {containers: [y]}\n        to: [h2]\n        after: [x]\n",
                  ":7: dependency cycle: x -> y -> x"),
        "capacity": (head + "hosts:\n  h2: {max_memory_mib: 40}\nwaves:\n  - name: w\n    moves:\n"
                     "      - select: {hosts: [h1]}\n        to: [h2]\n", ":8: capacity exceeded: x needs"),
        "cloud host without the operator's address": (
            head + "create:\n  far: {provider: aws}\nwaves:\n  - name: w\n    moves:\n"
            "      - select: {containers: [x]}\n        to: [far]\n", ":3: Host far needs the operator's address"),
    }
    before = lab2.ps()
    for what, (text, message) in cases.items():
        path = write(tmp_path, what.replace(" ", "-"), text)
        for verb in ("validate", "apply"):
            res = cloudmig("plan", verb, str(path), check=False, env={**lab2.env, "COLUMNS": "500"})
            assert res.returncode == 2, (what, verb, res.stdout, res.stderr)
            assert message in res.stderr, (what, verb, res.stderr)
    assert lab2.ps() == before
    assert "no plans" in lab2.cm("plan", "status").stdout
    assert json.loads(lab2.cm("plan", "schema").stdout)["properties"]["waves"]


def test_evacuate_and_rebalance_ask_then_apply_a_plan(lab3, tmp_path):
    for name, port in (("e1", 16351), ("e2", 16352), ("e3", 16353)):
        start(lab3, "h1", name, port)
    before = hosts_of(lab3)
    res = cloudmig("evacuate", "h1", "--to", "h2,h3", env=lab3.env, input="n\n", check=False)
    assert res.returncode == 1 and "select:" in res.stdout and "nothing changed" in res.stdout, res.stdout
    assert hosts_of(lab3) == before and "no plans" in lab3.cm("plan", "status").stdout

    # rebalance: h1 above the threshold sheds its largest containers onto the least loaded hosts
    shown = lab3.cm("rebalance", "--max-memory-pct", "100").stdout
    assert "nothing to move" in shown
    h1_pct = float(shown.split("h1: 3 containers")[1].split("%")[0].split()[-1])
    res = lab3.cm("rebalance", "--max-memory-pct", f"{h1_pct * 0.6:.6f}", "--yes")
    assert "rebalance" in res.stdout
    where = hosts_of(lab3)
    moved = [n for n in where if where[n] != "h1"]
    assert 1 <= len(moved) <= 2 and "h1" not in {where[n] for n in moved}

    # the evacuation's controller dies after its first move; `plan resume` (no argument)
    # finds that plan among the interrupted ones and finishes it
    first = sorted(n for n in where if where[n] == "h1")[0]
    res = cloudmig("evacuate", "h1", "--yes", check=False, timeout=300,
                   env={**lab3.env, "CLOUDMIG_PLAN_FAULTS": f"after-move:{first}:kill"})
    assert res.returncode == -signal.SIGKILL, res.stderr
    plans = json.loads(lab3.cm("plan", "status", "--json").stdout)
    assert [p["state"] for p in plans] == ["done", "interrupted"], plans
    lab3.cm("plan", "resume")
    where = hosts_of(lab3)
    assert set(where.values()) <= {"h2", "h3"} and len(where) == 3
    plans = json.loads(lab3.cm("plan", "status", "--json").stdout)
    assert [p["state"] for p in plans] == ["done", "done"]
    assert "nothing runs on h1" in lab3.cm("evacuate", "h1", "--yes").stdout


def test_two_controllers_share_one_plan_on_postgresql(lab3, tmp_path):
    names = [f"p{i}" for i in range(1, 7)]
    for i, name in enumerate(names):
        start(lab3, "h1", name, 16341 + i)
    plan = write(tmp_path, "shared", "name: shared\nlimits: {total: 2, per_controller: 1}\nwaves:\n"
                                     "  - name: all\n    moves:\n      - select: {hosts: [h1]}\n        to: [h2, h3]\n")
    with postgres_server() as url:
        env = {**os.environ, **lab3.env, "CLOUDMIG_PLANS_DB": url}

        def controller(ident: str, *extra: str) -> subprocess.Popen:
            return subprocess.Popen([CLOUDMIG, "plan", "apply", str(plan), *extra],
                                    env={**env, "CLOUDMIG_CONTROLLER_ID": ident},
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        a = controller("a")
        try:
            for _ in range(600):       # the plan is recorded: the second controller joins it
                res = cloudmig("plan", "status", "--json", env={**lab3.env, "CLOUDMIG_PLANS_DB": url})
                if json.loads(res.stdout):
                    break
                time.sleep(0.05)
            b = controller("b", "--join")
            try:
                outs = [p.communicate(timeout=300) for p in (a, b)]
            finally:
                b.kill()
        finally:
            a.kill()
        assert a.returncode == 0 and b.returncode == 0, outs
        pg = {**lab3.env, "CLOUDMIG_PLANS_DB": url}
        [row] = json.loads(cloudmig("plan", "status", "shared", "--json", env=pg).stdout)
        assert row["state"] == "done"
        runs = row["migrations"]
        assert sorted(r["container"] for r in runs) == names and all(r["ok"] for r in runs)   # each exactly once
        assert {r["pid"] for r in runs} == {a.pid, b.pid}          # both controllers moved some
        where = hosts_of(lab3)
        assert set(where[n] for n in names) <= {"h2", "h3"}
        assert most_at_once(runs) <= 2

        # a controller on another machine (a hostname of its own) killed once p1 moved: `plan
        # resume` here, with no argument, finds its plan interrupted and finishes it
        far = write(tmp_path, "far", "name: far\nlimits: {total: 1}\nwaves:\n  - name: back\n    moves:\n"
                                     "      - {select: {containers: [p1]}, to: [h1]}\n"
                                     "      - {select: {containers: [p2]}, to: [h1], after: [p1]}\n")
        res = subprocess.run(["unshare", "--uts", "sh", "-c", 'hostname elsewhere && exec "$@"', "-",
                              CLOUDMIG, "plan", "apply", str(far)], capture_output=True, text=True, timeout=300,
                             env={**env, "CLOUDMIG_CONTROLLER_ID": "far", "CLOUDMIG_PLAN_FAULTS": "after-move:p1:kill"})
        assert res.returncode == -signal.SIGKILL, (res.stdout, res.stderr)
        [row] = json.loads(cloudmig("plan", "status", "far", "--json", env=pg).stdout)
        assert row["state"] == "interrupted" and row["controller"]["host"] == "elsewhere"
        cloudmig("plan", "resume", env=pg)
        [row] = json.loads(cloudmig("plan", "status", "far", "--json", env=pg).stdout)
    assert row["state"] == "done" and row["controller"]["host"] == socket.gethostname()
    assert sorted((r["container"], r["ok"]) for r in row["migrations"]) == [("p1", True), ("p2", True)]
    assert hosts_of(lab3)["p1"] == hosts_of(lab3)["p2"] == "h1"


def test_plan_creates_a_host_and_decommissions_the_emptied_one(lab2, tmp_path):
    start(lab2, "h1", "d1", 16331)
    plan = write(tmp_path, "dc", "name: dc\ncreate:\n  h3: {provider: lab}\ndrain_timeout_s: 120\n"
                                 "waves:\n  - name: all\n    moves:\n      - select: {hosts: [h1]}\n        to: [h3]\n")
    client = HeldClient(lab2.public_address("h1"), 16331).start()      # through h1, forwarded once moved
    try:
        client.wait_answers(10)
        proc = subprocess.Popen([CLOUDMIG, "plan", "apply", str(plan), "--decommission"],
                                env={**os.environ, **lab2.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            for _ in range(1200):      # h1 waits for the client's connection to end
                rows = json.loads(lab2.cm("plan", "status", "--json").stdout)
                if rows and (rows[0]["outcome"] == "draining h1" or rows[0]["state"] != "running"):
                    break
                time.sleep(0.05)
            assert rows[0]["outcome"] == "draining h1", rows
            before = client.answers
            client.wait_answers(before + 10)         # still answered through h1 while it drains
        finally:
            client.stop()
            client.f.close()       # the socket's file too: the connection ends only with both
            client.assert_healthy()
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (out, err)
    finally:
        proc.kill()
    row = status(lab2, "dc")
    assert row["state"] == "done" and row["outcome"] == "h1: destroyed"      # drained, not timed out
    assert sorted(h["name"] for h in json.loads(lab2.cm("hosts", "--json").stdout)) == ["h2", "h3"]
    assert not [n for n in lab2.netns() if n.startswith(f"{lab2.lab_id}-h1")]
    [c] = lab2.ps()
    assert c["host"] == "h3" and c["forwards"] == [] and c["state"] == "running"
    sock, f = connect(lab2.public_address("h3"), 16331)
    with sock:
        assert resp(f, "PING") == "PONG"


def test_cut_over_runs_the_hook_then_drains_the_old_endpoint(lab2, tmp_path):
    start(lab2, "h1", "co", 16321)
    hooked = tmp_path / "hook.out"
    plan = write(tmp_path, "co", "name: co\nwaves:\n  - name: all\n    moves:\n      - select: {containers: [co]}\n"
                                 "        to: [h2]\n        health: {tcp: 6379}\n"
                                 "        cutover:\n          drain_timeout_s: 120\n          hook: [sh, -c, "
                                 f"'echo $CLOUDMIG_OLD_ADDRESS $CLOUDMIG_ADDRESS > {hooked}']\n")
    client = HeldClient(lab2.public_address("h1"), 16321).start()      # on the old endpoint
    try:
        client.wait_answers(10)
        proc = subprocess.Popen([CLOUDMIG, "plan", "apply", str(plan)], env={**os.environ, **lab2.env},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for _ in range(1200):      # the old endpoint drains while the client holds its connection
                rows = json.loads(lab2.cm("plan", "status", "--json").stdout)
                if rows and (rows[0]["containers"][0]["state"] == "draining" or rows[0]["state"] != "running"):
                    break
                time.sleep(0.05)
            assert rows[0]["containers"][0]["state"] == "draining", rows
            assert hooked.read_text().split() == [f"{lab2.public_address('h1')}:16321",
                                                  f"{lab2.public_address('h2')}:16321"]
            before = client.answers
            client.wait_answers(before + 10)
        finally:
            client.stop()
            client.f.close()
            client.assert_healthy()
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (out, err)
    finally:
        proc.kill()
    [c] = status(lab2, "co")["containers"]
    assert c["state"] == "done" and c["detail"] == "cut over from h1"
    [row] = lab2.ps()
    assert row["host"] == "h2" and row["forwards"] == []
    assert row["endpoints"] == [f"{lab2.public_address('h2')}:16321/tcp"]
    sock, f = connect(lab2.public_address("h2"), 16321)
    with sock:
        assert resp(f, "PING") == "PONG"
