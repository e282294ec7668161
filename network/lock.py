"""Silence a container's network namespace while it is frozen and checkpointed.

    from cloudmig.network import lock
    lock.lock("cm-c-h1-db")       # nothing enters or leaves (loopback excepted)
    ...                           # CRIU dumps the TCP connections
    lock.unlock("cm-c-h1-db")     # rollback: the container goes on here

CRIU locks each TCP connection with iptables rules in *its own* namespace, which for a
container with a namespace of its own (routed by its host) matches nothing: while the dump
runs, the frozen socket's kernel half would still ACK a client's request that the dump no
longer contains, and the restored connection would wait forever for bytes the client will
never resend (observed here; see docs/platform.md). This lock runs inside the container's
namespace, where it sees every packet of the container.
"""

from __future__ import annotations

import logging

from cloudmig import errors
from cloudmig.network import _nftnl, _ns

__all__ = ["TABLE", "lock", "unlock", "is_locked"]

log = logging.getLogger(__name__)

FAMILY, TABLE = "inet", "cloudmig_lock"
PRIORITY = -400   # before conntrack (-200): a dropped packet leaves no trace


def lock(netns: str) -> None:
    """Drop every packet entering or leaving ``netns`` except on loopback (idempotent)."""
    _ns.netns_path(netns)
    lines = [f"add table {FAMILY} {TABLE}"]
    for chain, hook in (("input", "prerouting"), ("output", "output")):
        lines.append(f"add chain {FAMILY} {TABLE} {chain} "
                     f"{{ type filter hook {hook} priority {PRIORITY}; policy drop; }}")
        iface = "iifname" if hook == "prerouting" else "oifname"
        lines.append(f"flush chain {FAMILY} {TABLE} {chain}")
        lines.append(f"add rule {FAMILY} {TABLE} {chain} {iface} \"lo\" accept")
    _ns.nft(netns, ["-f", "-"], f"locking the network of {netns}", "\n".join(lines) + "\n")
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
    return _ns.exists(netns) and _ns.nft_table_exists(netns, FAMILY, TABLE)
