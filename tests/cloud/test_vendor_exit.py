"""The mission on the simulated clouds, both ways: a database with a live client on a host of
one cloud moves to a host of the other; the client keeps its one TCP connection through the
first host's public address, and every key arrives. On the way, the tunnel opens each side's
firewall (security group / NSG) to the other side's address only, and closes it again."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess

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


@pytest.mark.parametrize("src_cloud,dst_cloud", [("azure", "aws"), ("aws", "azure")])
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
