"""The nfnetlink message format both of our netfilter clients speak (network/hold.py: the
packet queue; network/_nftnl.py: an nf_tables table): a netlink header, nfgenmsg (family,
version, resource id), then attributes. From the uapi of linux/netlink.h and
linux/netfilter/nfnetlink.h."""

from __future__ import annotations

import socket
import struct

NETLINK_NETFILTER = 12
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    data = struct.pack("HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def message(kind: int, family: int, res_id: int, attrs: bytes = b"",
            flags: int = NLM_F_REQUEST | NLM_F_ACK, seq: int = 0) -> bytes:
    """One nfnetlink message: ``kind`` is (subsystem << 8) | message type."""
    body = struct.pack("BBH", family, 0, socket.htons(res_id)) + attrs
    return struct.pack("IHHII", 16 + len(body), kind, flags, seq, 0) + body
