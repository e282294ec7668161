"""A Redis client that holds ONE TCP connection and issues requests continuously,
recording every answer, error and wait: what a user's application sees during a migration."""

from __future__ import annotations

import socket
import threading
import time

from lab import connect, resp

REQUEST_INTERVAL_S = 0.005     # a request every 5 ms
MAX_REQUESTS = 200_000         # bounded, whatever happens
REQUEST_TIMEOUT_S = 30         # a request unanswered this long is an error
STOP_GRACE_S = 5               # stop(): the request in flight gets this long to be answered


class HeldClient:
    def __init__(self, address: str, port: int, request_timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.request_timeout_s = request_timeout_s
        self.sock, self.f = connect(address, port, timeout_s=request_timeout_s)
        self.local = self.sock.getsockname()
        self.peer = self.sock.getpeername()
        self.answers = 0
        self.errors: list[str] = []
        self.longest_wait_s = 0.0
        self.counter_values: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> "HeldClient":
        resp(self.f, "DEL", "held-counter")
        self._thread.start()
        return self

    def _loop(self) -> None:
        n = 0
        while not self._stop.is_set() and n < MAX_REQUESTS:
            n += 1
            t = time.monotonic()
            try:
                value = resp(self.f, "INCR", "held-counter")
                key = resp(self.f, "GET", f"key:{n % 1000}")
            except Exception as exc:  # recorded; the test asserts there are none
                self.errors.append(f"request {n}: {exc!r}")
                return
            wait = time.monotonic() - t
            self.longest_wait_s = max(self.longest_wait_s, wait)
            self.counter_values.append(value)
            if key is None:
                self.errors.append(f"request {n}: key:{n % 1000} missing")
            self.answers += 1
            time.sleep(REQUEST_INTERVAL_S)

    def wait_answers(self, at_least: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while self.answers < at_least and time.monotonic() < deadline and not self.errors:
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop after the request in flight; one that has no answer coming (a connection
        whose other end was taken back to an older state) is cut off after STOP_GRACE_S
        rather than waited out (its error is recorded)."""
        self._stop.set()
        self._thread.join(STOP_GRACE_S)
        if self._thread.is_alive():
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._thread.join(self.request_timeout_s * 2 + 5)
        self.sock.close()

    def assert_healthy(self) -> None:
        assert not self.errors, self.errors[:5]
        assert self.counter_values == list(range(1, len(self.counter_values) + 1)), "answers out of order"


SAMPLE_STRIDE = 97          # every 97th key DEBUG POPULATE made: spread over the heap


def digests(address: str, port: int, keys: int) -> list[str]:
    """Redis's digest of the value of every SAMPLE_STRIDE-th key (needs --enable-debug-command):
    a byte that moved wrong changes one."""
    sock, f = connect(address, port)
    with sock:
        return resp(f, "DEBUG", "DIGEST-VALUE", *(f"key:{i}" for i in range(0, keys, SAMPLE_STRIDE)))


def check_data(address: str, port: int, keys: int, value_bytes: int, sampled: list[str] | None = None) -> None:
    """Every key DEBUG POPULATE made is there (plus the held client's counter), with its size;
    with ``sampled`` (``digests`` before the move), the sampled values byte for byte."""
    sock, f = connect(address, port)
    with sock:
        assert resp(f, "DBSIZE") in (keys, keys + 1)
        for i in (0, 1, keys // 2, keys - 1):
            assert resp(f, "STRLEN", f"key:{i}") == value_bytes
    if sampled is not None:
        assert digests(address, port, keys) == sampled
