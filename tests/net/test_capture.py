"""Done-when (2): between A's and B's public addresses the WAN carries only WireGuard UDP.

tcpdump on the lab bridge records a bulk TCP transfer from A's tunnel address to B's; the
capture must hold only UDP between the two WireGuard endpoints, enough of it to have carried
the transfer, no TCP, and not one copy of the (recognisable) plaintext.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time

import pytest

from cloudmig import paths

from netlab import netns_socket

BULK_BYTES = 32 * 1024 * 1024
CHUNK = b"CLOUDMIG-PLAINTEXT-MARKER-" * 2520           # ~64 KiB, easy to spot if it leaked
BULK_PORT = 5001
CAPTURE_START_TIMEOUT_S = 10


def bulk_transfer(src_netns, dst_netns, dst_ip) -> float:
    """Send BULK_BYTES over TCP from src to dst (both namespaces); returns Mbit/s."""
    listener = netns_socket(dst_netns)
    listener.bind((dst_ip, BULK_PORT))
    listener.listen(1)
    received = []

    def sink():
        conn, _ = listener.accept()
        with conn:
            total = 0
            while chunk := conn.recv(1 << 20):
                total += len(chunk)
            received.append(total)

    thread = threading.Thread(target=sink, daemon=True)
    thread.start()
    sender = netns_socket(src_netns)
    started = time.monotonic()
    sender.connect((dst_ip, BULK_PORT))
    sent = 0
    while sent < BULK_BYTES:
        sender.sendall(CHUNK)
        sent += len(CHUNK)
    sender.close()
    thread.join(timeout=60)
    elapsed = time.monotonic() - started
    listener.close()
    assert received == [sent]
    return sent * 8 / elapsed / 1e6


def test_wan_sees_only_wireguard_udp(lab, tmp_path):
    tcpdump = paths.tool("tcpdump")
    if not tcpdump:
        pytest.skip("tcpdump is not installed")
    a, b = lab.hosts["a"], lab.hosts["b"]
    ta, tb = lab.tunnel_pair()
    pcap = tmp_path / "wan.pcap"
    capture = subprocess.Popen([tcpdump, "-i", lab.bridge, "-n", "-U", "-w", str(pcap)],
                               stderr=subprocess.PIPE, text=True)
    lab.procs.append(capture)
    line = capture.stderr.readline()                  # "listening on ..." once it captures
    assert "listening" in line, line
    mbps = bulk_transfer(a.netns, b.netns, tb.overlay_ip)
    time.sleep(0.2)
    capture.terminate()
    capture.wait(timeout=CAPTURE_START_TIMEOUT_S)

    text = subprocess.run([tcpdump, "-n", "-r", str(pcap)], capture_output=True, text=True,
                          check=True).stdout.splitlines()
    ends = {f"{a.public_ip}.{ta.port}", f"{b.public_ip}.{tb.port}"}
    udp_bytes, between = 0, 0
    for line in text:
        match = re.search(r" IP (\S+) > (\S+): (.*)", line)
        if not match:
            continue                                  # ARP, IPv6 neighbour discovery
        src, dst, rest = match.group(1), match.group(2).rstrip(":"), match.group(3)
        hosts = {src.rsplit(".", 1)[0], dst.rsplit(".", 1)[0]}
        if hosts == {a.public_ip, b.public_ip}:
            between += 1
            assert {src, dst} == ends and rest.startswith("UDP"), line
            udp_bytes += int(re.search(r"length (\d+)", rest).group(1))
        assert "Flags [" not in rest, f"TCP on the WAN: {line}"
    assert between > 0 and udp_bytes >= BULK_BYTES
    assert b"PLAINTEXT-MARKER" not in pcap.read_bytes()
    print(f"\nbulk {BULK_BYTES >> 20} MiB through the tunnel: {mbps:.0f} Mbit/s; "
          f"{between} WireGuard packets, {udp_bytes} UDP payload bytes on the WAN")
