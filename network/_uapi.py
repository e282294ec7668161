"""The wireguard-go backend: one process per interface, configured over its UAPI socket.

    from cloudmig.network import _uapi
    _uapi.create("cm0a1b2c3d4e", "h1")                        # nsenter ... wireguard-go NAME
    _uapi.configure("cm0a1b2c3d4e", private_key="base64...", listen_port=51820, peers=[])
    print(_uapi.get("cm0a1b2c3d4e", "h1"))                    # (public key, port, peers)
    _uapi.destroy("cm0a1b2c3d4e")

The UAPI is a line protocol on /var/run/wireguard/NAME.sock: a request is ``set=1`` or
``get=1`` followed by ``key=value`` lines and an empty line; the answer ends with ``errno=N``
and an empty line. Keys travel in hex. The socket path depends only on the interface name,
so names must be unique on the machine, whatever namespace the interface lives in.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from pathlib import Path

from cloudmig import errors
from cloudmig.network import _ns, keys
from cloudmig.network._wgtypes import PeerStatus, PeerUpdate

log = logging.getLogger(__name__)

SOCKET_DIR = Path("/var/run/wireguard")
UAPI_TIMEOUT_S = 5          # a UAPI request is answered in microseconds
EXIT_TIMEOUT_S = 5          # wireguard-go exits within milliseconds of SIGTERM
POLL_INTERVAL_S = 0.02


def socket_path(name: str) -> Path:
    return SOCKET_DIR / f"{name}.sock"


def pids(name: str) -> list[int]:
    """Live wireguard-go processes serving interface ``name`` (zombies have no cmdline)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        except OSError:
            continue
        if len(argv) >= 2 and os.path.basename(argv[0]) == b"wireguard-go" \
                and argv[-1] == name.encode():
            found.append(int(entry.name))
    return found


def is_running(name: str) -> bool:
    return socket_path(name).exists() or bool(pids(name))


def create(name: str, netns: str | None) -> None:
    """Start wireguard-go for ``name`` in ``netns``; it returns once the device exists."""
    binary = _ns.need_tool("wireguard-go", "wireguard-go")
    _ns.run(netns, [binary, name], f"starting wireguard-go for {name}")
    if not socket_path(name).exists():
        raise errors.NetworkError(f"wireguard-go started for {name} but made no {socket_path(name)}.",
                                  hint="Check that /dev/net/tun works (`cloudmig doctor`).")
    log.info("wireguard-go serves %s in %s", name, _ns.describe(netns))


def destroy(name: str) -> bool:
    """Stop the wireguard-go of ``name`` (it deletes its device) and remove its socket."""
    found = pids(name)
    for pid in found:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    while pids(name) and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL_S)
    for pid in pids(name):
        log.warning("wireguard-go %d for %s ignored SIGTERM; killing it", pid, name)
        _signal(pid, signal.SIGKILL)
    had_socket = socket_path(name).exists()
    socket_path(name).unlink(missing_ok=True)
    return bool(found) or had_socket


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _request(name: str, text: str) -> list[tuple[str, str]]:
    path = socket_path(name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(UAPI_TIMEOUT_S)
    try:
        sock.connect(str(path))
        sock.sendall(text.encode())
        data = b""
        while not (data.endswith(b"\n\n") and b"errno=" in data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise errors.NetworkError(
            f"Cannot talk to wireguard-go for {name} on {path}: {exc.strerror or exc}.",
            hint="Is the tunnel up? Bring it up with wireguard.up(), or check `cloudmig doctor`.") from exc
    finally:
        sock.close()
    pairs = [tuple(line.split("=", 1)) for line in data.decode().splitlines() if "=" in line]
    code = next((int(v) for k, v in pairs if k == "errno"), None)
    if code is None:
        raise errors.NetworkError(f"wireguard-go for {name} closed its UAPI socket without an answer.",
                                  hint="It may have exited: bring the tunnel down and up again.")
    if code != 0:
        raise errors.NetworkError(
            f"wireguard-go refused the configuration of {name} (errno {code}: {os.strerror(code)}).",
            hint="Check peer keys, endpoints (IP:PORT) and allowed IPs (CIDR).")
    return [(k, v) for k, v in pairs if k != "errno"]


def format_set(private_key: str | None, listen_port: int | None,
               peers: list[PeerUpdate]) -> str:
    """The text of a ``set=1`` request (pure; keys base64 in, hex out)."""
    lines = ["set=1"]
    if private_key is not None:
        lines.append("private_key=" + keys.to_hex(private_key, "private key"))
    if listen_port is not None:
        lines.append(f"listen_port={listen_port}")
    for peer in peers:
        lines.append("public_key=" + keys.to_hex(peer.public_key, "peer public key"))
        if peer.remove:
            lines.append("remove=true")
            continue
        if peer.endpoint is not None:
            lines.append(f"endpoint={peer.endpoint}")
        if peer.persistent_keepalive is not None:
            lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive}")
        if peer.replace_allowed_ips:
            lines.append("replace_allowed_ips=true")
        lines.extend(f"allowed_ip={cidr}" for cidr in peer.allowed_ips or ())
    return "\n".join(lines) + "\n\n"


def parse_get(pairs: list[tuple[str, str]]) -> tuple[str, int, list[PeerStatus]]:
    """(public key, listen port, peers) from the ``key=value`` lines of a ``get=1`` answer."""
    private, port, peers, cur = None, 0, [], None
    for key, value in pairs:
        if key == "private_key":
            private = keys.from_hex(value)
        elif key == "listen_port":
            port = int(value)
        elif key == "public_key":
            cur = {"public_key": keys.from_hex(value), "endpoint": None, "allowed_ips": [],
                   "sec": 0, "nsec": 0, "rx_bytes": 0, "tx_bytes": 0, "keepalive": 0}
            peers.append(cur)
        elif cur is None:
            continue
        elif key == "endpoint":
            cur["endpoint"] = value
        elif key == "allowed_ip":
            cur["allowed_ips"].append(value)
        elif key in ("last_handshake_time_sec", "last_handshake_time_nsec"):
            cur[key.rsplit("_", 1)[1]] = int(value)
        elif key in ("rx_bytes", "tx_bytes"):
            cur[key] = int(value)
        elif key == "persistent_keepalive_interval":
            cur["keepalive"] = int(value)
    public = keys.public_key(private) if private else ""
    return public, port, [
        PeerStatus(public_key=p["public_key"], endpoint=p["endpoint"],
                   allowed_ips=tuple(p["allowed_ips"]),
                   latest_handshake=p["sec"] + p["nsec"] / 1e9, rx_bytes=p["rx_bytes"],
                   tx_bytes=p["tx_bytes"], persistent_keepalive=p["keepalive"])
        for p in peers]


def configure(name: str, private_key: str | None, listen_port: int | None,
              peers: list[PeerUpdate]) -> None:
    _request(name, format_set(private_key, listen_port, peers))


def get(name: str) -> tuple[str, int, list[PeerStatus]]:
    return parse_get(_request(name, "get=1\n\n"))
