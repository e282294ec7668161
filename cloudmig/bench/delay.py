"""A WAN's latency for the bench lab: every packet a lab host receives on its WAN interface
waits ``one_way_ms`` before the host sees it. With a delay line on both hosts, their round
trip grows by twice that; the controller (in the root namespace) sees one delay per round trip.

    with DelayLine("bn-h1", one_way_ms=25), DelayLine("bn-h2", one_way_ms=25):
        ...                      # h1 <-> h2: +50 ms round trip

This kernel has no netem (nor etf, nor fq, which honour a departure time): ``tc`` can limit
a rate but not add latency. So the packets are queued to user space instead: an iptables
rule (mangle PREROUTING, in on the WAN interface) sends them to a netfilter queue, and a
reader of our own (``python -m cloudmig.bench.delay``, run inside the host's namespace) lets
each one go ``one_way_ms`` after it was queued, in order (one batch verdict lets every packet
up to an id go, so a constant delay costs one message per batch, not one per packet).

Why on the way in: a packet held on its way out still belongs to its sender's socket, and
TCP's small-queue limit then stops the sender after two such packets (measured: a bulk TCP
transfer ran at 0.2 MB/s with a 50 ms round trip). The veth between a host and the bridge
orphans a packet, so one held on the way in weighs on no socket.

It fails open: the rule carries ``--queue-bypass`` (no reader: packets pass at once) and the
queue FAIL_OPEN (full: they pass at once). The reader stops when its stdin closes (the
process that started it stopped it, or died: a pipe's end closes with its process) or on
SIGTERM, and removes its rule; the lab's namespaces take any leftover with them. On 2 cores the reader costs CPU (one netlink message per packet): keep
the rate modest (100 mbit is ~9,000 packets a second each way).
"""

from __future__ import annotations

import argparse
import collections
import errno
import os
import select
import signal
import subprocess
import sys
import time

from cloudmig import errors
from cloudmig.network import _nfqueue as nfqueue

IFACE = "wan0"                  # a lab host's WAN interface (providers/lab/topology.py)
QUEUE_MAXLEN = 65536            # packets waiting at most; more pass at once (fail open)
MAX_ONE_WAY_MS = 1000
READY = b"ready\n"
START_TIMEOUT_S = 10


def _rule(queue: int, name: str) -> list[str]:
    return ["-i", IFACE, "-m", "comment", "--comment", f"cloudmig bench delay {name}",
            "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"]


class DelayLine:
    """A delay line in network namespace ``netns``, from ``__enter__`` to ``__exit__``."""

    def __init__(self, netns: str, one_way_ms: float) -> None:
        if not 0 < one_way_ms <= MAX_ONE_WAY_MS:
            raise errors.ConfigError(f"A one-way delay of {one_way_ms:g} ms: it must be 0-{MAX_ONE_WAY_MS} ms.")
        self.netns, self.one_way_ms = netns, one_way_ms
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "DelayLine":
        self._proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.netns}", sys.executable, "-m", "cloudmig.bench.delay",
             "--ms", f"{self.one_way_ms:g}", "--name", self.netns],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ready, _, _ = select.select([self._proc.stdout], [], [], START_TIMEOUT_S)
        line = self._proc.stdout.readline() if ready else b""
        if line != READY:
            self.__exit__(None, None, None)
            raise errors.NetworkError(f"The delay line in {self.netns} did not start: {line.decode().strip()}")
        return self

    def __exit__(self, *exc) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.stdin.close()              # the reader's signal to remove its rule and stop
        try:
            proc.wait(START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def serve(one_way_ms: float, name: str, out=sys.stdout.buffer, control=sys.stdin.buffer) -> None:
    """The reader, in the host's namespace: until ``control`` closes (or SIGTERM)."""
    delay = one_way_ms / 1000
    sock, queue = nfqueue.open_queue(f"delay {name}", QUEUE_MAXLEN)
    rule = _rule(queue, name)
    try:
        res = nfqueue.prerouting("-A", rule, "adding the delay rule")
        if res.returncode != 0:
            out.write(f"iptables: {res.stderr.strip()}\n".encode())
            out.flush()
            return
        try:
            sock.setblocking(False)
            out.write(READY)
            out.flush()
            _pass_on(sock, queue, delay, control)
        finally:
            nfqueue.prerouting("-D", rule, "removing the delay rule")
    finally:
        sock.close()


def _pass_on(sock, queue: int, delay: float, control) -> None:
    waiting: collections.deque[tuple[float, int]] = collections.deque()   # (when it may go, id)
    try:
        _loop(sock, queue, delay, control, waiting)
    finally:
        if waiting:                     # what still waits goes now, not dropped with the queue
            nfqueue.accept_upto(sock, queue, waiting[-1][1])


def _loop(sock, queue: int, delay: float, control, waiting) -> None:
    while True:
        timeout = max(0.0, waiting[0][0] - time.monotonic()) if waiting else 1.0
        ready, _, _ = select.select([sock, control], [], [], timeout)
        if control in ready and not os.read(control.fileno(), 64):
            return
        if sock in ready:
            now = time.monotonic()
            while True:
                try:
                    data = sock.recv(1 << 16)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:      # messages lost; a later verdict covers their packets
                        continue
                    raise
                waiting.extend((now + delay, packet_id) for packet_id in nfqueue.packet_ids(data))
        now, last = time.monotonic(), None
        while waiting and waiting[0][0] <= now:
            last = waiting.popleft()[1]
        if last is not None:
            nfqueue.accept_upto(sock, queue, last)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cloudmig.bench.delay")
    parser.add_argument("--ms", type=float, required=True, help="one-way delay, milliseconds")
    parser.add_argument("--name", required=True, help="names the queue and the rule")
    args = parser.parse_args(argv)
    # SIGTERM stops the loop like a closed stdin: the rule goes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(args.ms, args.name)


if __name__ == "__main__":
    main()
