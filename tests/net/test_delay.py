"""The bench's delay line (bench/delay.py): packets a host receives on its WAN wait the
delay, in order and all of them; the rule goes when the line stops; a reader that dies
fails open (packets pass at once)."""

from __future__ import annotations

import subprocess
import time

import pytest

from cloudmig import errors
from cloudmig.bench.delay import DelayLine
from cloudmig.bench.lab import parse_wan
from netlab import lab, served_client  # noqa: F401  (fixture)

ONE_WAY_MS = 30


def _rules(netns: str) -> str:
    return subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "iptables", "-t", "mangle", "-S"],
                          capture_output=True, text=True).stdout


def _round_trips(f, n: int, size: int = 1) -> list[float]:
    """Seconds per request/answer on the line server's connection (each answer checked)."""
    out = []
    for i in range(n):
        line = f"{i}".encode() * size
        start = time.monotonic()
        f.write(line + b"\n"); f.flush()
        assert f.readline() == b"svc " + line + b"\n"
        out.append(time.monotonic() - start)
    return out


def test_a_delay_line_delays_every_packet_and_fails_open(lab):  # noqa: F811
    a = lab.hosts["a"]
    client, f = served_client(lab, a, 7200)
    with DelayLine(a.netns, ONE_WAY_MS) as line:
        assert "cloudmig bench delay" in _rules(a.netns)
        # a request reaches the server one delay later, at the earliest: never before
        assert min(_round_trips(f, 5)) >= ONE_WAY_MS / 1000
        # larger requests (several segments each) arrive whole and in order
        _round_trips(f, 3, size=20000)
    assert "cloudmig bench delay" not in _rules(a.netns)
    _round_trips(f, 2)

    line = DelayLine(a.netns, ONE_WAY_MS).__enter__()
    try:
        line._proc.kill()
        line._proc.wait()
        # its rule stays, with --queue-bypass: nobody reads the queue, packets pass at once
        assert "cloudmig bench delay" in _rules(a.netns)
        _round_trips(f, 3)
    finally:
        line.__exit__(None, None, None)
        subprocess.run(["nsenter", f"--net=/run/netns/{a.netns}", "iptables", "-t", "mangle", "-F"], check=True)
    client.close()


def test_a_bench_wan_is_a_rate_a_round_trip_or_both():
    assert parse_wan(None) == parse_wan("none") == (None, 0.0)
    assert parse_wan("500mbit") == (500_000_000, 0.0)
    assert parse_wan("50ms") == (None, 50.0)
    assert parse_wan("100mbit+50ms") == (100_000_000, 50.0)
    for bad in ("50xs", "3000ms", "fast"):
        with pytest.raises(errors.ConfigError):
            parse_wan(bad)
