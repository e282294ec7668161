"""Moving CRIU's images between hosts (cloudmig/runtime/transfer.py), over loopback: a lazy
dump's images go as one zstd frame, a full dump's as they are; both arrive byte for byte."""

from __future__ import annotations

import json
import os
import socket
import struct

import pytest

from cloudmig import errors
from cloudmig.runtime import transfer


def images(tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    (src / "pages-1.img").write_bytes(os.urandom(300_000) + b"\0" * 1_000_000)    # like a lazy dump's
    (src / "core-1.img").write_bytes(b"core" * 700)
    (src / "empty.img").write_bytes(b"")
    return src


@pytest.mark.parametrize("compress", [True, False], ids=["zstd", "as they are"])
def test_images_arrive_byte_for_byte(tmp_path, compress):
    src = images(tmp_path)
    # a lazy dump's images come inside the freeze: their connection's first window is as
    # large as its buffer (a full dump's keep the growing default)
    rcvbuf = transfer.FREEZE_RCVBUF_BYTES if compress else None
    rx = transfer.Receiver.start(tmp_path / "dest", "127.0.0.1", rcvbuf=rcvbuf)
    if rcvbuf:
        assert rx._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= rcvbuf
    sent = transfer.send_files(src, "127.0.0.1", rx.port, rx.token, compress=compress)
    assert rx.wait(30) == sent == sum(f.stat().st_size for f in src.iterdir())
    for f in src.iterdir():
        assert (tmp_path / "dest" / f.name).read_bytes() == f.read_bytes(), f.name


def test_a_sender_that_does_not_wait_for_the_answer_still_delivers_everything(tmp_path):
    # inside the freeze the source does not wait for the receiver's answer (a one-way WAN
    # trip): the destination's restore waits for the receiver, which has the last word
    src = images(tmp_path)
    rx = transfer.Receiver.start(tmp_path / "dest", "127.0.0.1")
    sent = transfer.send_files(src, "127.0.0.1", rx.port, rx.token, compress=True, await_ack=False)
    assert rx.wait(30) == sent
    for f in src.iterdir():
        assert (tmp_path / "dest" / f.name).read_bytes() == f.read_bytes(), f.name
    # a transfer cut short is the receiver's error, even though the sender did not wait
    rx = transfer.Receiver.start(tmp_path / "short", "127.0.0.1")
    with transfer.connect("127.0.0.1", rx.port) as sock:
        header = json.dumps({"token": rx.token, "format": "files", "files": [["a.img", 100]],
                             "bytes": 100, "compression": None}).encode()
        sock.sendall(struct.pack("!I", len(header)) + header + b"x" * 10)
    with pytest.raises(errors.MigrationError):
        rx.wait(30)
    # a connection reset mid-transfer (the sender's host gone) is the transfer's error too
    rx = transfer.Receiver.start(tmp_path / "reset", "127.0.0.1")
    sock = transfer.connect("127.0.0.1", rx.port)
    header = json.dumps({"token": rx.token, "format": "files", "files": [["a.img", 100]],
                         "bytes": 100, "compression": None}).encode()
    sock.sendall(struct.pack("!I", len(header)) + header + b"x" * 10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()                                    # linger 0: a reset, not an end
    with pytest.raises(errors.MigrationError, match="broke off"):
        rx.wait(30)


def test_a_compression_this_cloudmig_cannot_read_is_refused(tmp_path):
    rx = transfer.Receiver.start(tmp_path / "dest", "127.0.0.1")
    # the header alone: the receiver refuses it before reading on (and closes at once)
    transfer._open_transfer("127.0.0.1", rx.port, {"token": rx.token, "format": "files",
                                                   "files": [["x.img", 4]], "compression": "brotli"}).close()
    with pytest.raises(errors.MigrationError, match="compressed with 'brotli'"):
        rx.wait(30)
