"""Network namespaces, netlink sockets and helper programs, in one place.

    from cloudmig.network import _ns
    with _ns.iproute("h1", "adding a route") as ipr:      # IPRoute inside /run/netns/h1
        ipr.route("replace", dst="100.96.0.5/32", oif=ipr.link_lookup(ifname="wg0")[0])
    _ns.sysctl("h1", {"net.ipv4.ip_forward": "1"})

Every public function of cloudmig.network takes ``netns``: a name under /run/netns, or None
for the namespace this process runs in (the agent runs inside its host's namespace). This
module is also the one place where pyroute2's ``NetlinkError`` becomes ``errors.NetworkError``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import json
import logging
import os
import re
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cloudmig import errors, paths

log = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0
_libc = ctypes.CDLL(None, use_errno=True)
SIOCGIFINDEX = 0x8933
IFREQ = struct.Struct("16si20x")         # struct ifreq (40 bytes): the name, then ifr_ifindex
TOOL_TIMEOUT_S = 30  # nft, sysctl and nsenter finish in milliseconds; this only catches hangs
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


def one_at_a_time(lock: threading.RLock) -> Callable:
    """Decorator: the function runs holding ``lock``. The changes of a module that reads a
    table and then writes it take its lock: the agent runs migrations in threads, and two
    migrations at once on one host (a plan's wave) would each find the tunnel untracked, or
    the port free, and both add it."""
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def holding(*args, **kwargs):
            with lock:
                return fn(*args, **kwargs)
        return holding
    return wrap


# What to tell the user for the errno a netlink request failed with.
_ERRNO_HINTS = {
    errno.EEXIST: "It already exists: remove it first, or pick another name.",
    errno.ENODEV: "No such interface: check the name, and that the tunnel or container is up.",
    errno.ENOENT: "Nothing matched: check the name or address (was it already removed?).",
    errno.ESRCH: "Nothing matched: check the name or address (was it already removed?).",
    errno.EPERM: "Run cloudmig as root (it needs CAP_NET_ADMIN).",
    errno.ENETUNREACH: "The gateway is not reachable: add the link's address or use onlink.",
}


def netns_path(netns: str) -> Path:
    """/run/netns/NAME, refusing names that do not exist (never creates a namespace)."""
    if not isinstance(netns, str) or not _NAME_RE.match(netns) or netns in (".", ".."):
        raise errors.NetworkError(
            f"{netns!r} is not a network namespace name; pass a name under {NETNS_DIR} "
            "(letters, digits, '.', '_', '-') or None for the current namespace.")
    path = NETNS_DIR / netns
    if not path.exists():
        raise errors.NetworkError(
            f"Network namespace {netns!r} does not exist ({path} is missing). Create it first "
            "(for lab hosts: `cloudmig lab up`), or pass netns=None for the current namespace.")
    return path


def exists(netns: str | None) -> bool:
    return netns is None or (NETNS_DIR / netns).exists()


def describe(netns: str | None) -> str:
    return "the current network namespace" if netns is None else f"network namespace {netns!r}"


def netlink_error(exc: NetlinkError, doing: str, netns: str | None) -> errors.NetworkError:
    """Translate a pyroute2 NetlinkError raised while ``doing`` something into our error."""
    code = exc.code
    reason = os.strerror(code) if code else str(exc)
    hint = _ERRNO_HINTS.get(code, "See `cloudmig doctor` for what this machine lacks.")
    return errors.NetworkError(f"Failed {doing} in {describe(netns)}: {reason} (errno {code}).",
                               hint=hint)


def join(path: str | Path) -> None:
    """The calling thread joins the network namespace at ``path`` (only that thread: the
    rest of the process stays where it is)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def socket_in(netns: str, family: int, kind: int, proto: int) -> socket.socket:
    """A socket made inside ``netns`` (a socket stays in the namespace it was made in): by a
    short-lived thread that joins the namespace, which this process keeps. pyroute2's own
    ``IPRoute(netns=...)`` forks the agent for it, ~5 ms more, and the destination routes
    and unlocks a restored container inside the freeze."""
    path = netns_path(netns)
    made: dict = {}

    def make() -> None:
        try:
            join(path)
            made["sock"] = socket.socket(family, kind, proto)
        except OSError as exc:
            made["error"] = exc

    worker = threading.Thread(target=make, name=f"netns-{netns}", daemon=True)
    worker.start()
    worker.join()
    if "error" in made:
        raise made["error"]
    return made["sock"]


@contextlib.contextmanager
def iproute(netns: str | None, doing: str) -> Iterator[IPRoute]:
    """An IPRoute bound to ``netns``; NetlinkErrors raised inside become NetworkError."""
    try:
        if netns is None:
            ipr = IPRoute()
        else:   # pyroute2 takes a datagram socket; for netlink that is the same as a raw one
            ipr = IPRoute(use_socket=socket_in(netns, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE))
    except OSError as exc:
        raise errors.NetworkError(f"Cannot open a netlink socket in {describe(netns)}: {exc}.",
                                  hint="Run cloudmig as root.") from exc
    try:
        yield ipr
    except NetlinkError as exc:
        raise netlink_error(exc, doing, netns) from exc
    finally:
        ipr.close()


def link_index(ipr: IPRoute, ifname: str) -> int | None:
    """The index of ``ifname`` in ``ipr``'s namespace, None if there is no such interface.

    An ioctl on the netlink socket (the kernel answers it in the socket's namespace) takes
    microseconds; pyroute2's ``link_lookup`` dumps every link, 2-5 ms on these 2 cores once
    CRIU and wireguard-go are busy, and the switch and the restore's routing ask inside the
    client's wait."""
    try:
        answer = fcntl.ioctl(ipr.fileno(), SIOCGIFINDEX, IFREQ.pack(ifname.encode(), 0))
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            return None
        found = ipr.link_lookup(ifname=ifname)      # not expected; the slow way still answers
        return found[0] if found else None
    return IFREQ.unpack(answer)[1]


def in_netns(netns: str | None, argv: list[str]) -> list[str]:
    """``argv`` prefixed so that it runs in ``netns`` (nsenter keeps the mount namespace)."""
    if netns is None:
        return argv
    nsenter = paths.tool("nsenter")
    if not nsenter:
        raise errors.NetworkError("nsenter is missing.", hint="apt-get install util-linux.")
    return [nsenter, f"--net={netns_path(netns)}", *argv]


def need_tool(name: str, package: str) -> str:
    found = paths.tool(name)
    if not found:
        raise errors.NetworkError(f"{name} is not installed.",
                                  hint=f"apt-get install {package}, or run `make bootstrap`.")
    return found


def run(netns: str | None, argv: list[str], doing: str, *, input: str | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run a helper program in ``netns``; a failure becomes NetworkError naming ``doing``."""
    full = in_netns(netns, argv)
    log.debug("run in %s: %s", describe(netns), " ".join(argv))
    try:
        res = subprocess.run(full, input=input, capture_output=True, text=True,
                             timeout=TOOL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise errors.NetworkError(f"Failed {doing} in {describe(netns)}: {exc}.") from exc
    if check and res.returncode != 0:
        detail = (res.stderr or res.stdout).strip().splitlines()
        raise errors.NetworkError(
            f"Failed {doing} in {describe(netns)}: {argv[0]} exited {res.returncode}"
            f" ({detail[-1] if detail else 'no output'}).",
            hint="Run `cloudmig doctor` to check the tools this machine needs.")
    return res


def sysctl(netns: str | None, settings: dict[str, str]) -> None:
    """Set sysctls of ``netns`` in one call (net.* sysctls are per network namespace)."""
    pairs = [f"{key}={value}" for key, value in settings.items()]
    run(netns, [need_tool("sysctl", "procps"), "-q", "-w", *pairs], "setting " + ", ".join(pairs))


def nft(netns: str | None, argv: list[str], doing: str, script: str | None = None) -> str:
    """Run ``nft ARGV`` in ``netns`` (``script`` on stdin, for ``-f -``); returns its stdout."""
    return run(netns, [need_tool("nft", "nftables"), *argv], doing, input=script).stdout


def nft_table_exists(netns: str | None, family: str, table: str) -> bool:
    out = nft(netns, ["-j", "list", "tables", family], "listing nftables tables")
    return any(item.get("table", {}).get("name") == table for item in json.loads(out)["nftables"])


def nft_rules(netns: str | None, family: str, table: str) -> list[dict]:
    """The rules of nftables table FAMILY TABLE as nft's JSON objects ([] if there is no table)."""
    if not nft_table_exists(netns, family, table):
        return []
    out = nft(netns, ["-j", "list", "table", family, table], f"listing table {family} {table}")
    return [item["rule"] for item in json.loads(out)["nftables"] if "rule" in item]
