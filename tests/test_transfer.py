"""Moving CRIU's images between hosts (cloudmig/runtime/transfer.py), over loopback: a lazy
dump's images go as one zstd frame, a full dump's as they are; both arrive byte for byte."""

from __future__ import annotations

import os
import socket

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


def test_a_compression_this_cloudmig_cannot_read_is_refused(tmp_path):
    rx = transfer.Receiver.start(tmp_path / "dest", "127.0.0.1")
    # the header alone: the receiver refuses it before reading on (and closes at once)
    transfer._open_transfer("127.0.0.1", rx.port, {"token": rx.token, "format": "files",
                                                   "files": [["x.img", 4]], "compression": "brotli"}).close()
    with pytest.raises(errors.MigrationError, match="compressed with 'brotli'"):
        rx.wait(30)
