"""Wake or delete an nf_tables table in a network namespace over netlink, without ``nft``.

    _nftnl.wake_table("/run/netns/cm-c-h1-db", "inet", "cloudmig_lock")    # its hooks act now
    _nftnl.delete_table("/run/netns/cm-c-h2-db", "inet", "cloudmig_lock")  # True if it was there

Why not ``nft delete table``: on this kernel the change itself is committed in ~0.1 ms, but
closing the NETLINK_NETFILTER socket that made it takes 7-18 ms (measured, docs/platform.md),
and ``nft`` closes it before it exits: the unlock that lets a restored container answer sat
behind that. Here the request is sent from a thread that entered the namespace (``setns``
moves only the calling thread), the caller returns at the kernel's acknowledgement, and the
socket is closed by that thread afterwards, off the caller's path.

A table created with ``flags dormant`` (by ``nft``, before the freeze) has its chains and rules
in place but no hook registered; ``wake_table`` clears the flag (NFT_MSG_NEWTABLE on the
existing table, NFTA_TABLE_FLAGS 0), and the hooks act from the commit on.

The messages (nfnetlink batch begin, NFT_MSG_NEWTABLE or NFT_MSG_DELTABLE, batch end;
network/_nfnetlink.py) are the documented uapi of linux/netfilter/nf_tables.h and
nfnetlink.h; pyroute2 0.9 has no nf_tables table API.
"""

from __future__ import annotations

import os
import socket
import struct
import threading

from cloudmig.network import _nfnetlink as nfnetlink
from cloudmig.network import _ns
from cloudmig.network._nfnetlink import NETLINK_NETFILTER, NLM_F_REQUEST, NLMSG_ERROR

NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWTABLE, NFT_MSG_DELTABLE = 0, 2
NFTA_TABLE_NAME, NFTA_TABLE_FLAGS = 1, 2
FAMILIES = {"inet": 1, "ip": 2, "ip6": 10, "arp": 3, "bridge": 7, "netdev": 5}
ACK_TIMEOUT_S = 5.0


def delete_table(netns_path: str, family: str, table: str) -> bool:
    """Delete ``family table`` in the namespace at ``netns_path``; False if it had none.
    Raises OSError for any other refusal."""
    return _table_change(netns_path, family, table, NFT_MSG_DELTABLE, b"", "deleting")


def wake_table(netns_path: str, family: str, table: str) -> None:
    """Clear a dormant table's flags, so its chains' hooks act. The table must exist: the
    kernel would create an empty one (NFT_MSG_NEWTABLE). Raises OSError if refused."""
    _table_change(netns_path, family, table, NFT_MSG_NEWTABLE,
                  nfnetlink.attr(NFTA_TABLE_FLAGS, struct.pack(">I", 0)), "waking")


def _table_change(netns_path: str, family: str, table: str, kind: int, attrs: bytes, doing: str) -> bool:
    fam = FAMILIES[family]
    batch = (nfnetlink.message(NFNL_MSG_BATCH_BEGIN, 0, NFNL_SUBSYS_NFTABLES, flags=NLM_F_REQUEST, seq=1)
             + nfnetlink.message((NFNL_SUBSYS_NFTABLES << 8) | kind, fam, 0,
                                 nfnetlink.attr(NFTA_TABLE_NAME, table.encode() + b"\0") + attrs, seq=2)
             + nfnetlink.message(NFNL_MSG_BATCH_END, 0, NFNL_SUBSYS_NFTABLES, flags=NLM_F_REQUEST, seq=3))
    done = threading.Event()
    outcome: dict = {}

    def work() -> None:
        sock = None
        try:
            _ns.join(netns_path)
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            sock.settimeout(ACK_TIMEOUT_S)
            sock.bind((0, 0))
            sock.send(batch)
            while "code" not in outcome:
                data = sock.recv(1 << 16)
                while len(data) >= 16 and "code" not in outcome:
                    length, kind, _flags, seq = struct.unpack_from("IHHI", data)
                    if kind == NLMSG_ERROR and seq == 2:
                        outcome["code"] = -struct.unpack_from("i", data, 16)[0]
                    data = data[(length + 3) & ~3:]
        except OSError as exc:
            outcome["exc"] = exc
        finally:
            done.set()                 # the caller goes on; the slow close happens here
            if sock is not None:
                sock.close()

    threading.Thread(target=work, name="nftnl", daemon=True).start()
    done.wait()
    if "exc" in outcome:
        raise outcome["exc"]
    code = outcome["code"]
    if code == 0:
        return True
    if code == 2:                      # ENOENT: no such table
        return False
    raise OSError(code, f"{doing} table {family} {table}: {os.strerror(code)}")
