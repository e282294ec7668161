"""Moving directories between hosts: a tar stream over one TCP connection in the tunnel.

    rx = Receiver.start(dest_dir, bind_address="100.64.0.2")      # on the destination
    send(src_dir, "100.64.0.2", rx.port, rx.token)                # on the source
    send_files(flat_dir, ..., compress=True)   # a flat directory (CRIU's images), no tar
    rx.wait()                                                      # -> bytes received

The receiver listens only on its tunnel address and accepts one connection that proves the
one-time token. GNU tar keeps what overlayfs needs in a writable layer: owners, modes,
whiteout devices and xattrs (``trusted.overlay.opaque``). ``Manifest`` makes the second sync
of a writable layer send only what changed since the first, and delete what went.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import shutil
import socket
import stat
import struct
import subprocess
import threading
from pathlib import Path

import zstandard

from cloudmig import errors

log = logging.getLogger(__name__)

ACCEPT_TIMEOUT_S = 120        # the source connects within this after the receiver is set up
TRANSFER_TIMEOUT_S = 3600     # one directory, at tunnel speed
HEADER_MAX_BYTES = 64 * 1024 * 1024
FILE_CHUNK_BYTES = 1024 * 1024
TAR_FLAGS = ["--xattrs", "--xattrs-include=*", "--numeric-owner", "--sparse"]
# A lazy dump's images are ~1.3 MB whatever the memory size: the pages CRIU cannot leave to
# userfaultfd (written private file mappings: the interpreter's and libraries' data). They
# cross the link inside the freeze; zstd at level 1 makes them 4.2x smaller for ~2 ms of CPU
# here and ~1 ms to unpack (docs/benchmarks.md).
ZSTD_LEVEL = 1
# The receive buffer of a lazy dump's images (``Receiver.start(..., rcvbuf=...)``), which
# cross the link inside the freeze. Linux offers a new connection a first window of about
# half its default 128 KiB buffer: ~300 KiB took round trips more than the tunnel's initial
# window (network/wireguard.py) needs. A fixed buffer no longer grows: fine for a small
# transfer, not for a full dump's images or a writable layer, which keep the default.
FREEZE_RCVBUF_BYTES = 4 << 20
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
# The receiver's first word, sent as it accepts. Its segment carries the receiver's whole
# window (a SYN-ACK cannot offer more than 64 KiB), so a sender that connected before a freeze
# knows it by then: the images' ~300 KiB then cross in one flight, not two (a WAN's round
# trip less: 88 -> ~40 ms waiting for them at 100mbit+50ms).
READY = b"R"


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise errors.MigrationError("The sending host closed the transfer early.")
        buf += chunk
    return bytes(buf)


def _safe_join(root: Path, rel: str) -> Path:
    target = Path(os.path.normpath(root / rel.lstrip("/")))
    if target != root and root not in target.parents:
        raise errors.MigrationError(f"Transfer named a path outside its directory: {rel!r}.")
    return target


class Receiver:
    def __init__(self, dest: Path, sock: socket.socket, token: str) -> None:
        self.dest, self._sock, self.token = dest, sock, token
        self.port = sock.getsockname()[1]
        self.bytes = 0
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @classmethod
    def start(cls, dest: Path, bind_address: str, rcvbuf: int | None = None) -> "Receiver":
        """Listen on ``bind_address``; ``rcvbuf``: a fixed receive buffer, set before the
        connection comes, so that its first window is as large (small transfers inside the
        freeze, FREEZE_RCVBUF_BYTES)."""
        dest.mkdir(parents=True, exist_ok=True)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf:
            try:       # beyond net.core.rmem_max (212 KiB on a stock Debian) as root
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            sock.bind((bind_address, 0))
        except OSError as exc:
            sock.close()
            raise errors.NetworkError(f"Cannot listen on tunnel address {bind_address}: {exc.strerror}.",
                                      hint="Is the tunnel up? `cloudmig tunnel status`.") from exc
        sock.listen(1)
        sock.settimeout(ACCEPT_TIMEOUT_S)
        rx = cls(dest, sock, secrets.token_hex(16))
        rx._thread.start()
        return rx

    def _run(self) -> None:
        try:
            conn, peer = self._sock.accept()
        except OSError as exc:
            self.error = errors.MigrationError(f"No sender connected within {ACCEPT_TIMEOUT_S} s ({exc}).")
            self._sock.close()
            return
        self._sock.close()
        with conn:
            try:
                conn.settimeout(TRANSFER_TIMEOUT_S)
                conn.sendall(READY)
                (size,) = struct.unpack("!I", _recv_exact(conn, 4))
                if size > HEADER_MAX_BYTES:
                    raise errors.MigrationError("Transfer header too large.")
                header = json.loads(_recv_exact(conn, size))
                if not hmac.compare_digest(str(header.get("token", "")), self.token):
                    raise errors.AuthError(f"A transfer from {peer[0]} had the wrong token.")
                if header.get("format") == "files":
                    self.bytes = self._receive_files(conn, header.get("files", []), header.get("compression"))
                    self._answer(conn)
                    return
                for rel in header.get("delete", []):
                    target = _safe_join(self.dest, rel)
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target, ignore_errors=True)
                    elif target.exists() or target.is_symlink():
                        target.unlink()
                conn.settimeout(None)
                res = subprocess.run(["tar", *TAR_FLAGS, "-xpf", "-", "-C", str(self.dest)],
                                     stdin=conn.fileno(), capture_output=True, timeout=TRANSFER_TIMEOUT_S)
                if res.returncode != 0:
                    raise errors.MigrationError(f"Unpacking the transfer failed: {res.stderr.decode(errors='replace').strip()}")
                self.bytes = int(header.get("bytes", 0))
                self._answer(conn)
            except OSError as exc:    # a reset, a timeout: reported through wait() as what it is
                self.error = errors.MigrationError(f"The transfer into {self.dest} broke off: {exc}.")
            except Exception as exc:  # reported to the controller through wait()
                self.error = exc

    @staticmethod
    def _answer(conn: socket.socket) -> None:
        """Everything arrived: say so. A sender that does not wait for the answer
        (``await_ack=False``) may have closed already; what it sent is here all the same."""
        try:
            conn.sendall(b"ok\n")
        except OSError:
            pass

    def _receive_files(self, conn: socket.socket, files: list, compression: str | None) -> int:
        """The ``files`` format: the files of one flat directory, back to back (in one zstd
        frame if ``compression`` is "zstd")."""
        if compression not in (None, "zstd"):
            raise errors.MigrationError(f"The transfer is compressed with {compression!r}, which this "
                                        "cloudmig cannot read.", hint="Run the same cloudmig on both hosts.")
        read = conn.recv
        if compression:
            read = zstandard.ZstdDecompressor().stream_reader(conn.makefile("rb", buffering=0)).read
        total = 0
        for name, size in files:
            if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
                raise errors.MigrationError(f"Transfer named a bad file: {name!r}.")
            fd = os.open(self.dest / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                left = int(size)
                while left:
                    chunk = read(min(left, FILE_CHUNK_BYTES))
                    if not chunk:
                        raise errors.MigrationError("The sending host closed the transfer early.")
                    out.write(chunk)
                    left -= len(chunk)
            total += int(size)
        return total

    def wait(self, timeout_s: float = TRANSFER_TIMEOUT_S) -> int:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise errors.MigrationError(f"The transfer into {self.dest} did not finish within {timeout_s} s.")
        if self.error:
            raise self.error
        return self.bytes

    def cancel(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass


Entry = tuple[int, int, int, int, int, int, int]  # mode, size, mtime_ns, uid, gid, rdev, ino


def manifest(root: Path) -> dict[str, Entry]:
    """Every path under ``root`` with what tells whether it changed."""
    found: dict[str, Entry] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue
            found[os.path.relpath(full, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_uid,
                                                  st.st_gid, st.st_rdev, st.st_ino)
    return found


def changes(before: dict[str, Entry], after: dict[str, Entry]) -> tuple[list[str], list[str]]:
    """(paths to send, paths to delete) to turn ``before`` into ``after``."""
    send = sorted(p for p, e in after.items() if before.get(p) != e)
    gone = sorted((p for p in before if p not in after), reverse=True)
    # a path whose type changed (file -> dir) is deleted first, then sent
    retyped = [p for p in send if p in before and stat.S_IFMT(before[p][0]) != stat.S_IFMT(after[p][0])]
    return send, gone + retyped


def connect(address: str, port: int) -> socket.socket:
    """A connection to a Receiver, once it said it is ready (``READY``), for a transfer whose
    header and data come later: opened before a freeze, its handshake and the receiver's
    window (round trips of the link) are not inside it."""
    try:
        sock = socket.create_connection((address, port), timeout=30)
    except OSError as exc:
        raise errors.NetworkError(f"Cannot reach {address}:{port} through the tunnel: {exc}.",
                                  hint="Check `cloudmig tunnel status`.") from exc
    try:
        word = sock.recv(len(READY))
    except OSError as exc:
        sock.close()
        raise errors.NetworkError(f"{address}:{port} did not answer through the tunnel: {exc}.",
                                  hint="Check `cloudmig tunnel status`.") from exc
    if word != READY:
        sock.close()
        raise errors.MigrationError(f"{address}:{port} is not a cloudmig receiver (it said {word!r}).")
    return sock


def _open_transfer(address: str, port: int, header: dict, sock: socket.socket | None = None) -> socket.socket:
    """Connect to a Receiver (or use ``sock``, connected ahead) and send the header (token,
    format, sizes)."""
    sock = sock or connect(address, port)
    data = json.dumps(header).encode()
    try:
        sock.sendall(struct.pack("!I", len(data)) + data)
    except OSError:
        sock.close()
        raise
    return sock


def _end_stream(sock: socket.socket, src: Path, await_ack: bool) -> None:
    """End the stream and wait for the Receiver's "ok" (sent once everything is unpacked).
    Without ``await_ack``, return once the stream is handed to the kernel: for a transfer whose
    receiver someone waits for anyway (``Receiver.wait``), which then says whether all of it
    arrived; across a WAN the answer costs a one-way trip, and the caller's next call would
    wait for it."""
    sock.shutdown(socket.SHUT_WR)
    if not await_ack:
        return
    if sock.recv(16) != b"ok\n":
        raise errors.MigrationError(f"The destination did not confirm the transfer of {src}.",
                                    hint="See the destination's agent log.")


def send(src: Path, address: str, port: int, token: str, *, only: list[str] | None = None,
         delete: list[str] | None = None, await_ack: bool = True, sock: socket.socket | None = None) -> int:
    """Send ``src`` (or just the paths ``only``) to a Receiver; returns the bytes of file data.
    ``await_ack``: see ``_end_stream``; ``sock``: a connection to it opened ahead (``connect``)."""
    names = only if only is not None else None
    data_bytes = 0
    for rel in (names if names is not None else [p for p in manifest(src)]):
        try:
            st = os.lstat(src / rel)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            data_bytes += st.st_size
    with _open_transfer(address, port, {"token": token, "delete": delete or [], "bytes": data_bytes},
                        sock) as sock:
        if names is None:
            argv = ["tar", *TAR_FLAGS, "-cf", "-", "-C", str(src), "."]
            stdin_data = None
        else:
            argv = ["tar", "-c", "-f", "-", *TAR_FLAGS, "-C", str(src), "--no-recursion", "--null", "-T", "-"]
            stdin_data = b"".join(n.encode() + b"\0" for n in names)
        sock.settimeout(None)
        res = subprocess.run(argv, input=stdin_data if stdin_data is not None else b"",
                             stdout=sock.fileno(), stderr=subprocess.PIPE, timeout=TRANSFER_TIMEOUT_S)
        if res.returncode != 0:
            raise errors.MigrationError(f"Packing {src} failed: {res.stderr.decode(errors='replace').strip()}")
        sock.settimeout(TRANSFER_TIMEOUT_S)
        _end_stream(sock, src, await_ack)
    return data_bytes


class _SendAll:
    """A socket as the file zstd's stream writer writes to (every byte, or an error)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.sent = sock, 0

    def write(self, data: bytes) -> int:
        self.sock.sendall(data)
        self.sent += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def send_files(src: Path, address: str, port: int, token: str, *, compress: bool = False,
               await_ack: bool = True, sock: socket.socket | None = None) -> int:
    """Send the regular files of the flat directory ``src`` (CRIU's images) to a Receiver,
    without tar: inside the freeze, two tar processes cost more than the bytes. With
    ``compress``, as one zstd frame (for small images: a full dump's GiBs go as they are,
    with sendfile, at no CPU cost). ``await_ack``: see ``_end_stream``."""
    files = []
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False):
            raise errors.MigrationError(f"{src} is not flat: it has a directory {entry.name}.")
        if entry.is_file(follow_symlinks=False):
            files.append((entry.name, entry.stat(follow_symlinks=False).st_size))
    total = sum(size for _, size in files)
    header = {"token": token, "format": "files", "files": files, "bytes": total,
              "compression": "zstd" if compress else None}
    with _open_transfer(address, port, header, sock) as sock:
        sock.settimeout(TRANSFER_TIMEOUT_S)
        if compress:
            wire = _SendAll(sock)
            with zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(wire, closefd=False) as out:
                for name, size in files:
                    data = (src / name).read_bytes()
                    if len(data) != size:
                        raise errors.MigrationError(f"{src / name} changed while it was sent.")
                    out.write(data)
            log.debug("sent %d bytes of %s as %d (zstd)", total, src, wire.sent)
        else:
            for name, size in files:
                with open(src / name, "rb") as fh:
                    sent = sock.sendfile(fh, 0, size) if size else 0
                if sent != size:
                    raise errors.MigrationError(f"{src / name} changed while it was sent.")
        _end_stream(sock, src, await_ack)
    return total

