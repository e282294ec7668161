"""`cloudmig tunnel up|status|down` between lab hosts, checked on the machine itself."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path


from cloudmig.bench.delay import DelayLine
from lab import Lab, cloudmig, lab_fixture

WG_RUN = Path("/var/run/wireguard")


lab = lab_fixture(3)


def _wg_state(lab: Lab) -> dict:
    inv = lab.inventory()
    names = [n for t in inv.get("tunnels", {}).values() for n in (t["iface_a"], t["iface_b"])]
    keys = list((lab.state_dir / "hosts").glob("*/wireguard/*.key"))
    return {"ifaces": names, "keys": keys,
            "sockets": [p for p in WG_RUN.glob("*.sock")] if WG_RUN.exists() else []}


def test_tunnel_up_status_down(lab):
    lab.cm("tunnel", "up", "h1", "h2")
    st = json.loads(lab.cm("tunnel", "status", "--json").stdout)
    [t] = st
    assert {t["a"], t["b"]} == {"h1", "h2"}
    for side in t["sides"]:
        assert side["state"] == "up"
        assert side["latest_handshake"] > 0
        assert side["rx_bytes"] > 0 and side["tx_bytes"] > 0
        assert side["endpoint"].split(":")[0] in (lab.public_address("h1"), lab.public_address("h2"))
    state = _wg_state(lab)
    assert len(state["keys"]) == 2
    for key in state["keys"]:
        assert os.stat(key).st_mode & 0o777 == 0o600
    ifaces = state["ifaces"]
    sockets_before = {p.name for p in state["sockets"]}
    assert {f"{i}.sock" for i in ifaces} <= sockets_before
    # private keys are never printed
    assert "PRIVATE" not in json.dumps(st).upper()

    human = cloudmig("tunnel", "status", env={**lab.env, "COLUMNS": "200"}).stdout   # one line a side
    assert "h1-h2" in human or "h2-h1" in human
    assert "KEEPALIVE" in human and human.count(" 25s ") == 2     # on at both ends

    lab.cm("tunnel", "down", "h1", "h2")
    assert json.loads(lab.cm("tunnel", "status", "--json").stdout) == []
    assert not list((lab.state_dir / "hosts").glob("*/wireguard/*.key"))
    assert not ({f"{i}.sock" for i in ifaces} & {p.name for p in WG_RUN.glob("*.sock")})
    assert not lab.processes("wireguard-go " + ifaces[0])


INITIATION_IP_BYTES = 148 + 8 + 20      # a WireGuard handshake initiation, in UDP, in IPv4


def _iptables_raw(netns: str, *args: str) -> str:
    return subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "iptables", "-w", "-t", "raw", *args],
                          check=True, capture_output=True, text=True).stdout


def _count_initiations(netns: str) -> None:
    """From now on, count the handshake initiations ``netns`` receives on its WAN (a rule
    without a target: it only counts)."""
    _iptables_raw(netns, "-A", "PREROUTING", "-i", "wan0", "-p", "udp", "-m", "length",
                  "--length", str(INITIATION_IP_BYTES))


def _initiations(netns: str) -> int:
    out = _iptables_raw(netns, "-L", "PREROUTING", "-v", "-x", "-n")
    return sum(int(line.split()[0]) for line in out.splitlines() if f"length {INITIATION_IP_BYTES}" in line)


def test_tunnel_up_across_a_wan_round_trip_takes_one_handshake(lab):
    """Hosts 50 ms apart (the bench's delay lines): the tunnel comes up with one handshake.
    Both ends used to start one as they were configured (their persistent keepalive), the
    two crossed, and WireGuard let the tunnel sit silent for its 5 s retry (or failed it)."""
    netns = {h: f"{lab.lab_id}-{h}" for h in ("h1", "h2")}
    for ns in netns.values():
        _count_initiations(ns)
    with DelayLine(netns["h1"], 25), DelayLine(netns["h2"], 25):
        lab.cm("tunnel", "up", "h1", "h2")
        [t] = json.loads(lab.cm("tunnel", "status", "--json").stdout)
    assert sum(_initiations(ns) for ns in netns.values()) == 1
    for side in t["sides"]:
        assert side["latest_handshake"] > 0
        assert side["keepalive_s"] == 25        # on once the session is there, at both ends


def test_tunnel_bad_input(lab):
    lab.cm("tunnel", "up", "h1", "h3")
    for args, message in [
        (["tunnel", "up", "h1", "h3"], "already up"),
        (["tunnel", "up", "h3", "h1"], "already up"),
        (["tunnel", "up", "h2", "h2"], "two different hosts"),
        (["tunnel", "up", "h1", "h9"], "Unknown host 'h9'"),
        (["tunnel", "down", "h1", "h2"], "no tunnel between"),
    ]:
        res = lab.cm(*args, check=False)
        assert res.returncode == 2, (args, res.stderr)
        assert "Error:" in res.stderr and message in res.stderr, (args, res.stderr)


def test_lab_down_removes_tunnels(lab):
    lab.cm("tunnel", "up", "h1", "h2")
    lab.cm("tunnel", "up", "h2", "h3")
    ifaces = _wg_state(lab)["ifaces"]
    assert len(ifaces) == 4
    lab.cm("lab", "down")
    assert lab.leftovers() == {}
    socks = {p.name for p in WG_RUN.glob("*.sock")} if WG_RUN.exists() else set()
    assert not ({f"{i}.sock" for i in ifaces} & socks)
    for i in ifaces:
        assert not lab.processes("wireguard-go " + i)
