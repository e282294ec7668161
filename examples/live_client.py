#!/usr/bin/env python3
"""A live client for the demo: ONE TCP connection to a Redis server, a request every 10 ms,
one line printed per second, and a summary when told to stop (SIGTERM/SIGINT).

    python3 examples/live_client.py 198.18.x.11 16379 --summary /tmp/client.json
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time

INTERVAL_S = 0.01


def command(sock_file, *words: str) -> bytes:
    payload = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
    sock_file.write(payload.encode())
    sock_file.flush()
    header = sock_file.readline()
    if not header:
        raise ConnectionError("the server closed the connection")
    if header[:1] == b"$":
        size = int(header[1:])
        return sock_file.read(size + 2)[:-2] if size >= 0 else b""
    return header[1:].strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--summary", help="write a JSON summary here at the end")
    args = ap.parse_args()

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    sock = socket.create_connection((args.host, args.port), timeout=60)
    f = sock.makefile("rwb")
    peer = "%s:%d" % sock.getpeername()
    print(f"client: one connection to {peer}, a request every {INTERVAL_S * 1000:.0f} ms", flush=True)
    requests, longest, errors, last_print = 0, 0.0, [], time.monotonic()
    expected = int(command(f, "INCR", "demo-counter"))
    while not stop:
        t = time.monotonic()
        try:
            value = int(command(f, "INCR", "demo-counter"))
        except (OSError, ValueError) as exc:
            errors.append(repr(exc))
            print(f"client: ERROR {exc!r}", flush=True)
            break
        wait = time.monotonic() - t
        longest = max(longest, wait)
        expected += 1
        if value != expected:
            errors.append(f"counter {value}, expected {expected}")
        requests += 1
        if t - last_print >= 1.0 or wait > 0.1:
            note = f"  <- waited {wait * 1000:.0f} ms" if wait > 0.1 else ""
            print(f"client: counter={value} requests={requests} longest wait={longest * 1000:.0f} ms{note}",
                  flush=True)
            last_print = t
        time.sleep(INTERVAL_S)
    summary = {"peer": peer, "requests": requests, "longest_wait_ms": round(longest * 1000, 1),
               "errors": errors, "same_connection": not errors}
    print(f"client: done, {requests} requests on one connection, longest wait "
          f"{summary['longest_wait_ms']} ms, errors: {len(errors)}", flush=True)
    if args.summary:
        with open(args.summary, "w") as fh:
            json.dump(summary, fh)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
