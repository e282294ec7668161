"""A client that holds ONE TCP connection to the workload and times every request.

    client = HeldClient("198.18.0.11", 17000).start()
    ...                                   # migrate
    client.stop()
    client.longest_wait_s, client.rate_between(t0, t1), client.check_state()

Every request (``REQ PAGE``) bumps the server's counter and returns a page checksum; the
client checks both (counter continuity, checksum against the pattern of the seed it learnt
at connect). Timestamps are wall-clock (``time.time()``) so they line up with a migration
report's phase timestamps.

If the connection breaks (cold restart), the client notes the error and, when given a
``fallback`` address, reconnects there: the gap until the first answer is then the
client's longest wait, and a new seed or a counter that restarted means the state is lost.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import socket
import struct
import threading
import time

from cloudmig.bench import workload

log = logging.getLogger(__name__)

REQUEST_INTERVAL_S = 0.002     # pause between two requests (the client's own pacing)
REQUEST_TIMEOUT_S = 30         # an answer later than this is an error
RECONNECT_TIMEOUT_S = 60       # cold restart: give up reconnecting after this
RECONNECT_POLL_S = 0.02
TCP_INFO_BYTES = 104               # struct tcp_info up to tcpi_total_retrans (linux/tcp.h)
TCPI_TOTAL_RETRANS_OFFSET = 100


@dataclasses.dataclass
class Sample:
    sent: float                # wall clock at send
    wait_s: float
    counter: int


class _Conn:
    def __init__(self, address: str, port: int, request_timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.sock = socket.create_connection((address, port), timeout=request_timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rwb")

    def ask(self, line: str) -> list[int]:
        self.f.write(line.encode() + b"\n")
        self.f.flush()
        answer = self.f.readline()
        if not answer:
            raise ConnectionError("the server closed the connection")
        return [int(w) for w in answer.split()]

    def close(self) -> None:
        self.sock.close()

    def retransmitted(self) -> int:
        """Segments this connection's kernel sent again so far (TCP_INFO's tcpi_total_retrans):
        a request that waited for a retransmission timeout counts here."""
        info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BYTES)
        return struct.unpack_from("I", info, TCPI_TOTAL_RETRANS_OFFSET)[0]


def connect(address: str, port: int, timeout_s: float = 10,
            request_timeout_s: float = REQUEST_TIMEOUT_S) -> _Conn:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return _Conn(address, port, request_timeout_s)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(RECONNECT_POLL_S)


class HeldClient:
    def __init__(self, address: str, port: int, fallback: str | None = None,
                 request_timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        """``request_timeout_s``: how long one answer may take (an outage's runs: longer than it)."""
        self.address, self.port, self.fallback = address, port, fallback
        self.request_timeout_s = request_timeout_s
        self.conn = connect(address, port, request_timeout_s=request_timeout_s)
        self.seed, self.pages, start_counter, _ = self.conn.ask("INFO")
        self._retrans_at_start = self.conn.retransmitted()
        self._retrans_at_close: int | None = None
        self.expected_counter = start_counter + 1
        self.samples: list[Sample] = []
        self.errors: list[str] = []        # wrong checksums, counter jumps, broken connection
        self.reconnected = False
        self.new_seed: int | None = None
        self.longest_wait_s = 0.0
        self._gap_from: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="bench-client")
        self._rng = random.Random(1)

    def start(self) -> "HeldClient":
        self._thread.start()
        return self

    def wait_answers(self, count: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        target = len(self.samples) + count
        while len(self.samples) < target and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.01)

    def stop(self) -> None:
        """End the request loop (the connection stays open for :meth:`verify`)."""
        self._stop.set()
        self._thread.join(self.request_timeout_s + RECONNECT_TIMEOUT_S + 5)

    def close(self) -> None:
        self._retrans_at_close = self.retransmitted()
        self.conn.close()

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while not self._stop.is_set():
            page = self._rng.randrange(self.pages)
            sent = time.time()
            try:
                counter, crc = self.conn.ask(f"REQ {page}")
            except (OSError, ValueError) as exc:
                self.errors.append(f"connection broke: {exc!r}")
                if not self._reconnect():
                    return
                continue
            now = time.time()
            if self._gap_from is not None:     # first answer after a reconnect
                self.longest_wait_s = max(self.longest_wait_s, now - self._gap_from)
                self._gap_from = None
            self._record(sent, now - sent, counter, crc, page)
            self.longest_wait_s = max(self.longest_wait_s, now - sent)
            time.sleep(REQUEST_INTERVAL_S)

    def _record(self, sent: float, wait_s: float, counter: int, crc: int, page: int) -> None:
        seed = self.new_seed if self.new_seed is not None else self.seed
        if crc != workload.page_crc(seed, page):
            self.errors.append(f"page {page}: checksum {crc} is not the pattern's")
        if counter != self.expected_counter and self.new_seed is None:
            self.errors.append(f"counter {counter}, expected {self.expected_counter}")
        self.expected_counter = counter + 1
        self.samples.append(Sample(sent=sent, wait_s=wait_s, counter=counter))

    def _reconnect(self) -> bool:
        """Cold restart: the old connection is gone; wait for the service at ``fallback``."""
        if self.fallback is None:
            return False
        self.conn.close()
        try:
            self.conn = connect(self.fallback, self.port, RECONNECT_TIMEOUT_S)
            seed, _, counter, _ = self.conn.ask("INFO")
        except (OSError, ValueError) as exc:
            self.errors.append(f"reconnect to {self.fallback} failed: {exc!r}")
            return False
        self.reconnected = True
        self.new_seed = seed
        self.expected_counter = counter + 1
        last = self.samples[-1] if self.samples else None
        self._gap_from = last.sent + last.wait_s if last else None
        return True

    # ------------------------------------------------------------------ results
    def rate_between(self, t0: float, t1: float) -> float:
        """Answered requests per second sent in [t0, t1)."""
        if t1 <= t0:
            return 0.0
        return sum(1 for s in self.samples if t0 <= s.sent < t1) / (t1 - t0)

    def longest_wait_between(self, t0: float, t1: float) -> float:
        waits = [s.wait_s for s in self.samples if t0 <= s.sent < t1]
        return max(waits, default=0.0)

    def state(self, verify_bad_pages: int | None) -> str:
        """"survived", "lost" (fresh start: new seed) or "corrupt" (wrong answers)."""
        if self.new_seed is not None and self.new_seed != self.seed:
            return "lost"
        bad = [e for e in self.errors if not e.startswith("connection broke")]
        if bad or (verify_bad_pages or 0) > 0 or self.reconnected:
            return "corrupt"
        return "survived"

    def retransmitted(self) -> int | None:
        """Segments the client's kernel sent again since the start (None after a reconnect)."""
        if self.reconnected or self.new_seed is not None:
            return None
        if self._retrans_at_close is not None:
            return self._retrans_at_close
        try:
            return self.conn.retransmitted() - self._retrans_at_start
        except OSError:
            return None

    def verify(self) -> int:
        """Ask the server to compare all its pages with the pattern (touches all memory)."""
        (bad,) = self.conn.ask("VERIFY")
        return bad
