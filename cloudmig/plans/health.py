"""After a move: is the container answering through its endpoint on its new host?

    health.check(check, data, "web")      # None when healthy, else the reason

``tcp``: a connect to the published port; ``http``: a GET answered 2xx or 3xx; ``command``:
a program run on the controller, exit 0 (with CLOUDMIG_CONTAINER, CLOUDMIG_HOST and
CLOUDMIG_ADDRESS, the endpoint, in its environment). Retried until ``timeout_s``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

from cloudmig.inventory import InventoryData
from cloudmig.plans.model import Health

RETRY_S = 0.2


def endpoint(data: InventoryData, name: str, container_port: int | None) -> tuple[str, int] | None:
    c = data.container(name)
    address = data.host(c.host).public_address or ""
    for p in c.ports:
        if p.proto == "tcp" and (container_port is None or p.container_port == container_port):
            return address, p.host_port
    return None


def _tcp(address: str, port: int, timeout: float) -> str | None:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"tcp connect to {address}:{port}: {exc.strerror or exc}"


def _http(address: str, port: int, path: str, timeout: float) -> str | None:
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
            head = s.makefile("rb").readline().decode(errors="replace").split()
    except OSError as exc:
        return f"http GET {address}:{port}{path}: {exc.strerror or exc}"
    if len(head) < 2 or not head[1].isdigit() or not 200 <= int(head[1]) < 400:
        return f"http GET {address}:{port}{path} answered {' '.join(head[:3]) or 'nothing'}"
    return None


def run_command(argv: list[str], name: str, host: str, ep: tuple[str, int] | None, timeout: float,
                extra_env: dict[str, str] | None = None) -> str | None:
    """Run ``argv`` on the controller for container ``name`` (now on ``host``, endpoint ``ep``):
    None if it exited 0, else why not."""
    env = dict(os.environ, CLOUDMIG_CONTAINER=name, CLOUDMIG_HOST=host,
               CLOUDMIG_ADDRESS=f"{ep[0]}:{ep[1]}" if ep else "", **(extra_env or {}))
    try:
        res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"command {argv[0]}: {exc}"
    if res.returncode != 0:
        return f"command {' '.join(argv)} exited {res.returncode}: {res.stderr.strip()[-200:]}"
    return None


def check(health: Health, data: InventoryData, name: str) -> str | None:
    port = health.tcp if health.tcp is not None else health.port
    ep = endpoint(data, name, port)
    if ep is None and health.command is None:
        return f"{name} publishes no TCP port{f' for container port {port}' if port else ''} to check"
    deadline = time.monotonic() + health.timeout_s
    while True:
        left = max(deadline - time.monotonic(), 0.5)
        if health.command is not None:
            problem = run_command(health.command, name, data.container(name).host, ep, left)
        elif health.http is not None:
            problem = _http(ep[0], ep[1], health.http, min(left, 5))
        else:
            problem = _tcp(ep[0], ep[1], min(left, 5))
        if problem is None or time.monotonic() >= deadline:
            return problem
        time.sleep(RETRY_S)
