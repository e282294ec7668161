"""A netfilter queue of our own, over a NETLINK_NETFILTER socket (nfnetlink_queue's binary
protocol, from linux/netfilter/nfnetlink_queue.h): bind a free queue number, read the ids of
the packets it queues, let them go. Two readers use it: network/hold.py (packets wait while a
container is frozen) and bench/delay.py (packets wait a WAN's latency).

    sock, queue = open_queue("db", maxlen=8192)   # an iptables rule: -j NFQUEUE --queue-num queue
    for packet_id in packet_ids(sock.recv(1 << 16)): ...
    accept_upto(sock, queue, packet_id)            # every packet queued up to that id goes on

The queue is opened with FAIL_OPEN (full: packets pass instead of being dropped) and copies
only each packet's metadata to us; the rules that feed it should carry ``--queue-bypass`` (no
reader: packets pass). pyroute2 has no public nf-queue API, and python's NetfilterQueue needs
a C library built on every host.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import zlib

from cloudmig import errors
from cloudmig.network import _nfnetlink as nfnetlink, _ns
from cloudmig.network._nfnetlink import NETLINK_NETFILTER, NLM_F_REQUEST, NLMSG_ERROR

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 2, 3
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_CFG_F_FAIL_OPEN = 1
NF_ACCEPT = 1
PACKET_MESSAGE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET

QUEUE_NUM_BASE = 20000         # queue numbers cloudmig tries, from here
QUEUE_NUM_TRIES = 64
RCVBUF_BYTES = 4 << 20


def _message(msg: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST | nfnetlink.NLM_F_ACK) -> bytes:
    """A message of the queue subsystem about queue number ``queue``."""
    return nfnetlink.message((NFNL_SUBSYS_QUEUE << 8) | msg, socket.AF_UNSPEC, queue, attrs, flags)


def _attrs(data: bytes):
    while len(data) >= 4:
        length, kind = struct.unpack_from("HH", data)
        if length < 4:
            return
        yield kind & 0x7FFF, data[4:length]
        data = data[(length + 3) & ~3:]


def open_queue(name: str, maxlen: int) -> tuple[socket.socket, int]:
    """A socket bound to a free queue (numbers tried from one derived from ``name``), holding
    ``maxlen`` packets at most (more pass), and the queue's number."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        sock.bind((0, 0))
        queue = _bind_free_queue(sock, name)
        flags = struct.pack("!I", NFQA_CFG_F_FAIL_OPEN)
        _request(sock, _message(NFQNL_MSG_CONFIG, queue,
                                nfnetlink.attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
                                + nfnetlink.attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen))
                                + nfnetlink.attr(NFQA_CFG_FLAGS, flags) + nfnetlink.attr(NFQA_CFG_MASK, flags)))
    except BaseException:
        sock.close()
        raise
    return sock, queue


def packet_ids(data: bytes):
    """The id of each packet the messages in ``data`` (one recv) announce, in order."""
    while len(data) >= 16:
        length, kind = struct.unpack_from("IH", data)
        if length < 16:
            return
        if kind == PACKET_MESSAGE:
            for attr, payload in _attrs(data[20:length]):
                if attr == NFQA_PACKET_HDR:
                    yield struct.unpack_from("!I", payload)[0]
        data = data[(length + 3) & ~3:]


def accept_upto(sock: socket.socket, queue: int, packet_id: int) -> None:
    """Let every packet queued with an id up to ``packet_id`` go on."""
    verdict = nfnetlink.attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id))
    sock.send(_message(NFQNL_MSG_VERDICT_BATCH, queue, verdict, flags=NLM_F_REQUEST))


def prerouting(action: str, rule: list[str], doing: str) -> subprocess.CompletedProcess:
    """iptables on mangle PREROUTING in this namespace, where both readers' rules feed their
    queues (before DNAT and routing); the caller reads the exit status."""
    return _ns.run(None, [_ns.need_tool("iptables", "iptables"), "-w", "-t", "mangle", action, "PREROUTING",
                          *rule], doing, check=False)


def _bind_free_queue(sock: socket.socket, name: str) -> int:
    start = QUEUE_NUM_BASE + zlib.crc32(name.encode()) % 10000
    for queue in range(start, start + QUEUE_NUM_TRIES):
        cmd = nfnetlink.attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET))
        try:
            _request(sock, _message(NFQNL_MSG_CONFIG, queue, cmd))
            return queue
        except OSError as exc:
            if exc.errno != 16:        # EBUSY: another reader has that queue
                raise errors.NetworkError(f"Cannot open a netfilter queue: {exc.strerror}.",
                                          hint="Run `cloudmig doctor` on this host.") from exc
    raise errors.NetworkError(f"No free netfilter queue for {name} (tried {QUEUE_NUM_TRIES}).")


def _request(sock: socket.socket, message: bytes) -> None:
    """Send a config message and read its acknowledgement (an error raises OSError)."""
    sock.send(message)
    while True:
        data = sock.recv(1 << 16)
        length, kind = struct.unpack_from("IH", data)
        if kind == NLMSG_ERROR:
            code = struct.unpack_from("i", data, 16)[0]
            if code:
                raise OSError(-code, "netfilter queue: " + os.strerror(-code))
            return
