"""Lab hosts, agents and containers, used the way a user would: through the CLI."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest

from lab import Lab, connect, new_lab_id, resp

REDIS = ["redis-server", "--port", "6379", "--protected-mode", "no", "--save", "", "--appendonly", "no"]


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path / "state", new_lab_id())
    try:
        yield lab
    finally:
        lab.cm("lab", "down", check=False)


def test_three_hosts_a_redis_container_and_a_client(lab):
    res = lab.cm("lab", "up", "--hosts", "3")
    assert "h3" in res.stdout
    again = lab.cm("lab", "up", "--hosts", "3")  # idempotent
    assert "already up" in again.stdout
    assert len(lab.netns()) == 3

    lab.cm("run", "h2", "db", "--publish", "16379:6379", "--env", "GREETING=hi", "--", *REDIS)
    h2 = lab.public_address("h2")
    sock, f = connect(h2, 16379)
    with sock:
        assert resp(f, "PING") == "PONG"
        assert resp(f, "SET", "greeting", "hello") == "OK"
        assert resp(f, "GET", "greeting") == "hello"

    [row] = lab.ps()
    assert row["name"] == "db" and row["host"] == "h2" and row["state"] == "running"
    assert re.match(r"^100\.(9[6-9]|1[01][0-9]|12[0-7])\.", row["service_ip"])
    assert f"{h2}:16379/tcp" in row["endpoints"]

    logs = lab.cm("logs", "db").stdout
    assert "Ready to accept connections" in logs

    lab.cm("rm", "db")
    assert lab.ps() == []
    assert not lab.processes("redis-server --port 6379")
    assert len(lab.netns()) == 3  # only the hosts' namespaces remain

    lab.cm("lab", "down")
    assert lab.leftovers("redis-server --port 6379") == {}


# sent from inside a lab host's namespace: one UDP datagram whose IP header says it comes from
# SOURCE (a raw socket writes its own header), to DESTINATION:PORT
SEND_FROM = r"""
import socket, struct, sys
src, dst, word, port = sys.argv[1], sys.argv[2], sys.argv[3].encode(), int(sys.argv[4])
udp = struct.pack("!HHHH", 40000, port, 8 + len(word), 0) + word
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                 socket.inet_aton(src), socket.inet_aton(dst))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
try:
    s.sendto(ip + udp, (dst, 0))
    print("sent")
except PermissionError:                          # netfilter dropped it on its way out
    print("refused")
"""


def test_a_lab_host_cannot_send_with_another_hosts_address(lab):
    """Like a cloud's network (EC2's source/destination check): what h2 sends with h1's
    address as source never leaves it; with its own address it does."""
    from cloudmig.network import _ns
    from cloudmig.providers.lab.topology import SOURCE_CHECK_TABLE, Topology
    lab.cm("lab", "up", "--hosts", "2")
    bridge = Topology(lab.lab_id).bridge_address
    h1, h2 = lab.public_address("h1"), lab.public_address("h2")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind((bridge, 0))
        rx.settimeout(2)
        port = str(rx.getsockname()[1])
        said = [subprocess.run(["ip", "netns", "exec", f"{lab.lab_id}-h2", sys.executable, "-c", SEND_FROM,
                                source, bridge, word, port], check=True, capture_output=True,
                               text=True).stdout.strip()
                for source, word in ((h1, "spoofed"), (h2, "own"))]
        assert said == ["refused", "sent"]
        got = [rx.recvfrom(64)]
        with pytest.raises(socket.timeout):
            got.append(rx.recvfrom(64))
    assert got == [(b"own", (h2, 40000))]
    counters = [e["counter"]["packets"] for rule in _ns.nft_rules(f"{lab.lab_id}-h2", "ip", SOURCE_CHECK_TABLE)
                for e in rule["expr"] if "counter" in e]
    assert counters == [1]


def test_bad_input_is_refused_and_nothing_is_half_made(lab):
    lab.cm("lab", "up", "--hosts", "2")
    lab.cm("run", "h1", "db", "--publish", "16379:6379", "--", *REDIS)
    netns_before = lab.netns()

    cases = [
        (["run", "h9", "x", "--", "redis-server"], "Unknown host 'h9'"),
        (["run", "h1", "db", "--", "redis-server"], "already exists"),
        (["run", "h1", "other", "--publish", "16379", "--", *REDIS], "already published"),
        (["run", "h1", "img", "--image", "/nonexistent/rootfs", "--", "sh"], "not found"),
        (["run", "h1", "nocmd", "--", "no-such-program-here"], "does not exist in image"),
        (["run", "h1", "badport", "--publish", "99999", "--", *REDIS], "out of range"),
        (["run", "h1", "noargs"], "No command"),
        (["run", "h1", "tiny", "--memory-mib", "-5", "--", *REDIS], "too small"),
        (["run", "h1", "zero", "--memory-mib", "0", "--", *REDIS], "too small"),
    ]
    for args, message in cases:
        res = lab.cm(*args, check=False)
        assert res.returncode != 0, args
        assert "Error:" in res.stderr and message in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr
    assert [r["name"] for r in lab.ps()] == ["db"]
    assert lab.netns() == netns_before
    inv = lab.inventory()
    assert sorted(inv["containers"]) == ["db"]
    assert sorted(p.name for p in (lab.state_dir / "hosts" / "h1" / "containers").iterdir()) == ["db"]


def test_a_container_that_ends_at_start_keeps_its_output_until_rm(lab):
    lab.cm("lab", "up", "--hosts", "1")
    res = lab.cm("run", "h1", "brief", "--", "sh", "-c", "echo the reason it ends; exit 3", check=False)
    assert res.returncode != 0 and "exited right after it started" in res.stderr, res.stderr
    assert "cloudmig logs brief" in res.stderr and "Traceback" not in res.stderr
    assert "the reason it ends" in lab.cm("logs", "brief").stdout
    [row] = lab.ps()
    assert row["name"] == "brief" and row["state"] != "running"
    again = lab.cm("run", "h1", "brief", "--", "true", check=False)     # the name stays taken
    assert again.returncode == 2 and "already exists" in again.stderr
    lab.cm("rm", "brief")
    assert lab.ps() == [] and not (lab.state_dir / "hosts" / "h1" / "containers" / "brief").exists()
    assert not [n for n in lab.netns() if n.endswith("-brief")]


def test_lab_down_twice_and_up_again(lab):
    lab.cm("lab", "up", "--hosts", "1")
    lab.cm("lab", "down")
    lab.cm("lab", "down")
    assert lab.leftovers() == {}
    lab.cm("lab", "up", "--hosts", "1")
    assert len(lab.netns()) == 1
