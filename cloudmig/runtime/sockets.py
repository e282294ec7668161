"""Small socket facts of this host's network namespace, for the page server and its client.

    port = sockets.free_port("100.64.0.1")
    sockets.tcp_established("100.64.0.1", port)     # the lazy-pages daemon connected?
    sockets.unix_listening(pid)                     # the daemon accepts its restore's connection?
    sockets.abort_page_server("100.64.0.1", port)   # end a lazy dump nobody will fetch from
"""

from __future__ import annotations

import os
import socket
import struct

ABORT_CONNECT_TIMEOUT_S = 5
# criu/page-xfer.c's struct page_server_iov {u32 cmd; u64 nr_pages; u64 vaddr; u64 dst_id},
# native layout, with cmd PS_IOV_CLOSE (0x1023)
PS_IOV_CLOSE = struct.pack("@IQQQ", 0x1023, 0, 0, 0)
SO_ACCEPTCON = 1 << 16          # /proc/net/unix's flag of a listening socket


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def abort_page_server(address: str, port: int) -> None:
    """End a lazy dump whose pages nobody will fetch: tell its page server the session is
    over (CRIU's PS_IOV_CLOSE), as a finished lazy-pages daemon does. A client that only
    connects and closes no longer ends it: our CRIU patch's page server then waits for
    another client, so that a restore that failed after its daemon connected leaves the
    source's frozen copy to roll back to."""
    try:
        with socket.create_connection((address, port), timeout=ABORT_CONNECT_TIMEOUT_S) as s:
            s.sendall(PS_IOV_CLOSE)
            s.recv(4)                   # the server's status: the session is over
    except OSError:
        pass


def tcp_established(address: str, port: int) -> bool:
    """Is there an ESTABLISHED TCP connection to ADDRESS:PORT in this network namespace?"""
    want = f"{socket.inet_aton(address)[::-1].hex().upper()}:{port:04X}"
    try:
        with open("/proc/net/tcp") as fh:
            next(fh)
            return any(f.split()[2] == want and f.split()[3] == "01" for f in fh)
    except OSError:
        return False


def unix_listening(pid: int) -> bool:
    """Does process PID hold a listening unix socket (listen() done, not only bind())?"""
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:                    # gone
        return False
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:                # closed while we looked
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    with open("/proc/net/unix") as fh:
        next(fh)
        return any(f.split()[6] in inodes and int(f.split()[3], 16) & SO_ACCEPTCON for f in fh)
