"""Silence a container's network namespace while it is frozen and checkpointed.

    from cloudmig.network import lock
    lock.arm("cm-c-h1-db")        # before the freeze: the lock in place, dormant
    lock.lock("cm-c-h1-db", armed=True)   # nothing enters or leaves (loopback excepted)
    ...                           # CRIU dumps the TCP connections
    lock.unlock("cm-c-h1-db")     # rollback: the container goes on here (armed or locked)

CRIU locks each TCP connection with iptables rules in *its own* namespace, which for a
container with a namespace of its own (routed by its host) matches nothing: while the dump
runs, the frozen socket's kernel half would still ACK a client's request that the dump no
longer contains, and the restored connection would wait forever for bytes the client will
never resend (observed here; see docs/platform.md). This lock runs inside the container's
namespace, where it sees every packet of the container.

The lock sits inside the freeze, and ``nft`` costs 3-5 ms there on these 2 cores (a fork, an
exec, a netlink socket whose close is slow). So ``arm`` writes the table before the freeze with
``flags dormant`` (chains and rules in place, no hook registered), and ``lock(armed=True)``
wakes it with one netlink message (network/_nftnl.py): 0.3-0.5 ms in the freeze.
"""

from __future__ import annotations

import logging

from cloudmig import errors
from cloudmig.network import _nftnl, _ns

__all__ = ["TABLE", "arm", "lock", "unlock", "is_locked"]

log = logging.getLogger(__name__)

FAMILY, TABLE = "inet", "cloudmig_lock"
PRIORITY = -400   # before conntrack (-200): a dropped packet leaves no trace


def _table(flags: str) -> str:
    """The lock's table, made anew in one transaction (a dormant one left behind included)."""
    lines = [f"add table {FAMILY} {TABLE}", f"delete table {FAMILY} {TABLE}",
             f"add table {FAMILY} {TABLE} {{ {flags} }}"]
    for chain, hook in (("input", "prerouting"), ("output", "output")):
        lines.append(f"add chain {FAMILY} {TABLE} {chain} "
                     f"{{ type filter hook {hook} priority {PRIORITY}; policy drop; }}")
        iface = "iifname" if hook == "prerouting" else "oifname"
        lines.append(f"add rule {FAMILY} {TABLE} {chain} {iface} \"lo\" accept")
    return "\n".join(lines) + "\n"


def arm(netns: str) -> None:
    """Put the lock in place, dormant: it drops nothing until ``lock(netns, armed=True)``."""
    _ns.netns_path(netns)
    _ns.nft(netns, ["-f", "-"], f"arming the network lock of {netns}", _table("flags dormant;"))
    log.info("network lock of %s armed", netns)


def lock(netns: str, armed: bool = False) -> None:
    """Drop every packet entering or leaving ``netns`` except on loopback (idempotent).
    ``armed``: ``arm`` put the table there (and nothing removed it since): wake it."""
    path = _ns.netns_path(netns)
    if armed:
        try:
            _nftnl.wake_table(str(path), FAMILY, TABLE)
        except OSError as exc:
            raise errors.NetworkError(f"Failed locking the network of {netns}: {exc}.") from exc
    else:
        _ns.nft(netns, ["-f", "-"], f"locking the network of {netns}", _table(""))
    log.info("network of %s locked", netns)


def unlock(netns: str) -> bool:
    """Remove the lock (False if there was none or the namespace is gone)."""
    if not _ns.exists(netns):
        return False
    # over netlink, not `nft delete table`: this sits between the restore and the first
    # answer, and nft waits ~10 ms for its netlink socket to close (see _nftnl)
    try:
        if not _nftnl.delete_table(str(_ns.netns_path(netns)), FAMILY, TABLE):
            return False
    except OSError as exc:
        raise errors.NetworkError(f"Failed unlocking the network of {netns}: {exc}.") from exc
    log.info("network of %s unlocked", netns)
    return True


def is_locked(netns: str) -> bool:
    """The lock acts (a dormant, armed one does not)."""
    if not (_ns.exists(netns) and _ns.nft_table_exists(netns, FAMILY, TABLE)):
        return False
    # the text, not -j: nft 1.0.6's JSON prints a table's flags wrong (Debian 12)
    listing = _ns.nft(netns, ["list", "table", FAMILY, TABLE], f"reading the lock of {netns}")
    return not any(line.split() == ["flags", "dormant"] for line in listing.splitlines())
