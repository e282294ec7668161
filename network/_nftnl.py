"""Delete an nf_tables table in a network namespace over netlink, without running ``nft``.

    _nftnl.delete_table("/run/netns/cm-c-h2-db", "inet", "cloudmig_lock")  # True if it was there

Why not ``nft delete table``: on this kernel the change itself is committed in ~0.1 ms, but
closing the NETLINK_NETFILTER socket that made it takes 7-18 ms (measured, docs/platform.md),
and ``nft`` closes it before it exits: the unlock that lets a restored container answer sat
behind that. Here the request is sent from a thread that entered the namespace (``setns``
moves only the calling thread), the caller returns at the kernel's acknowledgement, and the
socket is closed by that thread afterwards, off the caller's path.

The messages (nfnetlink batch begin, NFT_MSG_DELTABLE, batch end) are the documented uapi of
linux/netfilter/nf_tables.h and nfnetlink.h; pyroute2 0.9 has no nf_tables table API.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import threading

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_DELTABLE = 2
NFTA_TABLE_NAME = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
CLONE_NEWNET = 0x40000000
FAMILIES = {"inet": 1, "ip": 2, "ip6": 10, "arp": 3, "bridge": 7, "netdev": 5}
ACK_TIMEOUT_S = 5.0

_libc = ctypes.CDLL(None, use_errno=True)


def _nla(kind: int, payload: bytes) -> bytes:
    data = struct.pack("HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _msg(kind: int, flags: int, seq: int, family: int, attrs: bytes = b"", res_id: int = 0) -> bytes:
    body = struct.pack("BBH", family, 0, socket.htons(res_id)) + attrs
    return struct.pack("IHHII", 16 + len(body), kind, flags, seq, 0) + body


def delete_table(netns_path: str, family: str, table: str) -> bool:
    """Delete ``family table`` in the namespace at ``netns_path``; False if it had none.
    Raises OSError for any other refusal."""
    fam = FAMILIES[family]
    batch = (_msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 1, 0, res_id=NFNL_SUBSYS_NFTABLES)
             + _msg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELTABLE, NLM_F_REQUEST | NLM_F_ACK, 2, fam,
                    _nla(NFTA_TABLE_NAME, table.encode() + b"\0"))
             + _msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 3, 0, res_id=NFNL_SUBSYS_NFTABLES))
    done = threading.Event()
    outcome: dict = {}

    def work() -> None:
        sock = None
        try:
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {netns_path}: {os.strerror(err)}")
            finally:
                os.close(fd)
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
    raise OSError(code, f"deleting table {family} {table}: {os.strerror(code)}")
