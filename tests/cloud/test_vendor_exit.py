"""The mission on the simulated clouds, both ways: a database with a live client on a host of
one cloud moves to a host of the other; the client keeps its one TCP connection through the
first host's public address, and every key arrives. From aws to azure with `cloudmig migrate`:
on the way, the tunnel opens each side's firewall (security group / NSG) to the other side's
address only, and closes it again. From azure to aws with a plan: it creates the aws host (it
boots and joins by itself), moves everything off the azure host, and destroys that host once
the client's connection through it ended."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time

import pytest

from lab import CLOUDMIG, connect, resp
from redis_client import HeldClient, check_data

PORT = 16381
KEYS = 50_000
VALUE_BYTES = 1000
REDIS = ["redis-server", "--port", "6379", "--protected-mode", "no", "--save", "", "--appendonly", "no",
         "--enable-debug-command", "yes"]
OPERATOR = "198.18.0.0/15"


def _cm(env, *args, check=True, timeout=300):
    res = subprocess.run([CLOUDMIG, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"cloudmig {' '.join(args)}: {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def _create_both(env, hosts: dict[str, str]) -> None:
    """Create the hosts at once (each boots and joins), as a user would in two terminals."""
    procs = {name: subprocess.Popen([CLOUDMIG, "host", "create", "--provider", cloud, "--timeout", "120", "--operator-cidr",
                                     OPERATOR, name], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True) for name, cloud in hosts.items()}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0 and f"host {name} ({hosts[name]}) ready" in out, out


def _udp_sources(sim, cloud: str, name: str, port: int) -> list[str]:
    """Who may reach UDP ``port`` of host ``name``, as the cloud's firewall says."""
    if cloud == "aws":
        [sg] = sim.ec2.ec2().describe_security_groups(GroupNames=[f"cloudmig-{name}"])["SecurityGroups"]
        return sorted(r["CidrIp"] for p in sg["IpPermissions"] if p["IpProtocol"] == "udp"
                      and p["FromPort"] == port for r in p["IpRanges"])
    [nsg] = [r for r in sim.arm.live().values() if r["type"] == "Microsoft.Network/networkSecurityGroups"
             and r["name"] == f"{name}-nsg"]
    return sorted(src for r in nsg["properties"]["securityRules"] if r["properties"]["protocol"] == "Udp"
                  and r["properties"]["destinationPortRange"] == str(port)
                  for src in r["properties"]["sourceAddressPrefixes"])


@pytest.mark.parametrize("src_cloud,dst_cloud", [("aws", "azure")])
def test_a_live_database_leaves_one_cloud_for_the_other(cloud_sim, state_dir, tmp_path, src_cloud, dst_cloud):
    env = {**os.environ, **cloud_sim.env, "CLOUDMIG_STATE_DIR": str(state_dir)}
    src, dst = f"on-{src_cloud}", f"on-{dst_cloud}"
    _create_both(env, {src: src_cloud, dst: dst_cloud})
    hosts = {h["name"]: h for h in json.loads(_cm(env, "hosts", "--json").stdout)}
    entry, new_home = hosts[src]["public_address"], hosts[dst]["public_address"]
    for address in (entry, new_home):
        assert ipaddress.ip_address(address) in ipaddress.ip_network("198.18.0.0/15")

    _cm(env, "run", src, "db", "--publish", f"{PORT}:6379", "--", *REDIS)
    sock, f = connect(entry, PORT)
    with sock:
        assert resp(f, "DEBUG", "POPULATE", str(KEYS), "key", str(VALUE_BYTES)) == "OK"
    client = HeldClient(entry, PORT).start()
    try:
        client.wait_answers(30)
        report_file = tmp_path / "report.json"
        _cm(env, "migrate", "db", "--to", dst, "--report", str(report_file), timeout=600)
        answers = client.answers
        client.wait_answers(answers + 30)
        assert client.answers >= answers + 30, "no answers after the move"
    finally:
        client.stop()
    client.assert_healthy()
    assert client.peer[0] == entry
    report = json.loads(report_file.read_text())
    assert report["ok"] and report["state"] == "done" and report["source"] == src, report
    [row] = json.loads(_cm(env, "ps", "--json").stdout)
    assert row["host"] == dst and row["state"] == "running"
    assert f"{entry}:{PORT}/tcp (forwarded)" in row["endpoints"]
    check_data(entry, PORT, KEYS, VALUE_BYTES)          # through the first host, forwarded over the tunnel
    check_data(new_home, PORT, KEYS, VALUE_BYTES)       # at the new home

    # the tunnel opened each side's WireGuard port to the other side's address, and only that
    [tunnel] = json.loads((state_dir / "inventory.json").read_text())["tunnels"].values()
    ports = {tunnel["a"]: tunnel["port_a"], tunnel["b"]: tunnel["port_b"]}
    clouds = {src: src_cloud, dst: dst_cloud}
    peer = {src: new_home, dst: entry}
    for name in (src, dst):
        assert _udp_sources(cloud_sim, clouds[name], name, ports[name]) == [f"{peer[name]}/32"]

    _cm(env, "rm", "db")
    _cm(env, "tunnel", "down", src, dst)
    for name in (src, dst):
        assert _udp_sources(cloud_sim, clouds[name], name, ports[name]) == []
    for name in (src, dst):
        _cm(env, "host", "destroy", name)
    assert json.loads(_cm(env, "hosts", "--json").stdout) == []


PLAN = """\
name: leave-azure
create:
  new-home: {{provider: aws, operator_cidr: "{operator}"}}
drain_timeout_s: 120
waves:
  - name: all
    moves:
      - select: {{hosts: [old-home]}}
        to: [new-home]
        health: {{tcp: 6379}}
"""


def _plan_row(env) -> dict:
    """The plan's row in `plan status --json` ({} until the plan is recorded)."""
    rows = json.loads(_cm(env, "plan", "status", "--json").stdout)
    return rows[0] if rows else {}


def test_a_plan_creates_the_new_cloud_host_moves_everything_and_destroys_the_old(cloud_sim, state_dir, tmp_path):
    env = {**os.environ, **cloud_sim.env, "CLOUDMIG_STATE_DIR": str(state_dir)}
    _cm(env, "host", "create", "--provider", "azure", "--timeout", "120", "--operator-cidr", OPERATOR, "old-home")
    [old] = json.loads(_cm(env, "hosts", "--json").stdout)
    entry = old["public_address"]
    _cm(env, "run", "old-home", "db", "--publish", f"{PORT}:6379", "--", *REDIS)
    sock, f = connect(entry, PORT)
    with sock, f:                      # both: the connection ends only with its file too
        assert resp(f, "DEBUG", "POPULATE", str(KEYS), "key", str(VALUE_BYTES)) == "OK"
    plan = tmp_path / "leave-azure.yaml"
    plan.write_text(PLAN.format(operator=OPERATOR))
    _cm(env, "plan", "validate", str(plan))

    client = HeldClient(entry, PORT).start()           # through the azure host all along
    proc = subprocess.Popen([CLOUDMIG, "plan", "apply", str(plan), "--decommission"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client.wait_answers(30)
        for _ in range(6000):            # created, moved; the azure host waits for the client
            row = _plan_row(env)
            if row.get("outcome") == "draining old-home" or row.get("state", "running") != "running" \
                    or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert row.get("outcome") == "draining old-home", (row, proc.poll() is not None and proc.communicate())
        answers = client.answers
        client.wait_answers(answers + 30)
        assert client.answers >= answers + 30, "no answers through the draining host"
    finally:
        client.stop()
        client.f.close()               # the connection ends only with its file too
        out, err = proc.communicate(timeout=300)
    client.assert_healthy()
    assert proc.returncode == 0, (out, err)
    row = _plan_row(env)
    assert (row["state"], row["outcome"]) == ("done", "old-home: destroyed")     # drained, not timed out
    [new] = json.loads(_cm(env, "hosts", "--json").stdout)
    assert (new["name"], new["provider"], new["state"]) == ("new-home", "aws", "ready")
    [c] = json.loads(_cm(env, "ps", "--json").stdout)
    assert c["host"] == "new-home" and c["state"] == "running"
    check_data(new["public_address"], PORT, KEYS, VALUE_BYTES)
    assert not [r for r in cloud_sim.arm.live().values() if r["type"] == "Microsoft.Compute/virtualMachines"]
    _cm(env, "rm", "db")
    _cm(env, "host", "destroy", "new-home")
