"""Holding a service's packets (network/hold.py): a TCP client's request sent while the hold
is on waits in the kernel, and is answered after the release, by whatever the route says
then; a holder that dies fails open."""

from __future__ import annotations

import select
import subprocess
import sys
import textwrap

from netlab import lab, served_client  # noqa: F401  (fixture)

HOLDER = """
    import sys
    from cloudmig.network.hold import Hold
    h = Hold.start("t1", sys.argv[1], [(sys.argv[2], int(sys.argv[3]), "tcp")])
    print("holding", flush=True)
    sys.stdin.readline()
    print("released", h.release(), flush=True)
    h.wait_closed()
    print("closed", flush=True)
"""


def _holder(netns: str, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{netns}", sys.executable, "-c",
                             textwrap.dedent(HOLDER), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding", proc.stderr.read()
    return proc


def _rules(netns: str) -> str:
    return subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "iptables", "-t", "mangle", "-S"],
                          capture_output=True, text=True).stdout


def test_held_requests_are_answered_after_the_release_and_a_dead_holder_fails_open(lab):  # noqa: F811
    a = lab.hosts["a"]
    client, f = served_client(lab, a, 7100)

    holder = _holder(a.netns, "100.96.9.9", a.public_ip, "7100")
    try:
        assert "NFQUEUE" in _rules(a.netns) and "cloudmig hold t1" in _rules(a.netns)
        f.write(b"during\n"); f.flush()
        ready, _, _ = select.select([client], [], [], 0.5)
        assert not ready, "a held request was answered"
        holder.stdin.write("\n"); holder.stdin.flush()
        assert holder.stdout.readline().split()[0] == "released"
        assert f.readline() == b"svc during\n"        # nothing lost, answered on the same connection
        assert holder.stdout.readline().strip() == "closed"
        assert "NFQUEUE" not in _rules(a.netns)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()

    # a holder that dies: what it held is dropped (TCP resends it), the rest passes (bypass)
    holder = _holder(a.netns, "100.96.9.9", a.public_ip, "7100")
    holder.kill()
    holder.wait()
    f.write(b"after the holder died\n"); f.flush()
    assert f.readline() == b"svc after the holder died\n"
    subprocess.run(["nsenter", f"--net=/run/netns/{a.netns}", sys.executable, "-c",
                    "from cloudmig.network import hold; assert hold.release_orphans('t1') == 2"], check=True)
    assert "NFQUEUE" not in _rules(a.netns)
    client.close()
