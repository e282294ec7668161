"""A host's own store of image layers, addressed by content: ``<host_dir>/layers/<hex>/``.

    store = LayerStore(Path("/var/lib/cloudmig/hosts/h1/layers"))
    store.missing(["sha256:3f2a...", "sha256:9b1c..."])     # -> the digests this host lacks
    store.install(Path(".../blob"), "sha256:3f2a...")        # verify, unpack, rename into place
    store.lowerdirs(["sha256:3f2a...", "sha256:9b1c..."])    # overlayfs lowerdir, top first

A layer's digest is ``sha256:`` + the sha256 of its *uncompressed* tar (what OCI calls the
layer's diff_id), so a layer is one entry whether it came gzip'd from a registry or plain
from ``docker save``. An entry keeps the layer as it travelled (``blob``: a tar, maybe gzip,
bzip2, xz or zstd compressed; what a migration sends on to the next host) and its unpacked
tree (``tree``: an overlayfs lower directory, OCI whiteouts turned into overlayfs ones).
An entry appears by one rename of a complete, verified directory, so it is there whole or
not at all, and nothing in it changes afterwards: installing a layer twice is harmless.

Hosts unpack layers from any image, as root, so unpacking is GNU tar's (which refuses
members outside the directory and defers dangerous symlinks) fed by our own decompression,
which hashes the bytes on the way: one pass both verifies the digest and unpacks.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import logging
import lzma
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import typing
import zlib
from pathlib import Path

from cloudmig import errors

log = logging.getLogger(__name__)

DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
READ_CHUNK_BYTES = 1024 * 1024
UNPACK_TIMEOUT_S = 3600          # one layer of a few GiB, at disk speed
STALE_INCOMING_S = 24 * 3600     # unfinished uploads older than this are swept away
# xattrs a layer may bring: file capabilities and user attributes. Never trusted.* (overlayfs
# reads its own from there: an image must not steer it) nor other security.* ones.
TAR_UNPACK_FLAGS = ["--numeric-owner", "--same-owner", "--same-permissions", "--xattrs",
                    "--xattrs-include=security.capability", "--xattrs-include=user.*"]

_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


def check_digest(digest: str) -> str:
    """The hex part of a well-formed ``sha256:<64 hex>`` digest (hosts build paths from it)."""
    m = DIGEST_RE.match(digest) if isinstance(digest, str) else None
    if not m:
        raise errors.ConfigError(f"{digest!r} is not a layer digest (sha256:<64 hex digits>).")
    return m.group(1)


def compression(path: Path) -> str | None:
    """How ``path`` is compressed (gzip, bzip2, xz, zstd), by its first bytes; None if plain."""
    with open(path, "rb") as fh:
        head = fh.read(6)
    return next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)), None)


@contextlib.contextmanager
def open_uncompressed(path: Path) -> typing.Iterator[typing.BinaryIO]:
    """``path``'s bytes, decompressed if need be."""
    kind = compression(path)
    if kind is None:
        with open(path, "rb") as fh:
            yield fh
    elif kind in ("gzip", "bzip2", "xz"):
        opener = {"gzip": gzip.open, "bzip2": bz2.open, "xz": lzma.open}[kind]
        with opener(path, "rb") as fh:
            yield typing.cast(typing.BinaryIO, fh)
    else:
        zstd = shutil.which("zstd")
        if not zstd:
            raise errors.HostSetupError(f"{path} is zstd-compressed and this machine has no zstd.",
                                        hint="Install it: apt-get install zstd.")
        proc = subprocess.Popen([zstd, "-dcq", str(path)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        try:
            yield typing.cast(typing.BinaryIO, proc.stdout)
        finally:
            proc.stdout.close()  # type: ignore[union-attr]  (PIPE above)
            if proc.wait() not in (0, -signal.SIGPIPE):     # SIGPIPE: we stopped reading early
                raise errors.ContainerError(f"{path} is not a valid zstd stream.")


def tar_digest(path: Path) -> str:
    """``sha256:<hex>`` of the uncompressed content of the layer file ``path``."""
    h = hashlib.sha256()
    try:
        with open_uncompressed(path) as fh:
            for chunk in iter(lambda: fh.read(READ_CHUNK_BYTES), b""):
                h.update(chunk)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise errors.ContainerError(f"Cannot read the layer {path}: {exc}.") from exc
    return "sha256:" + h.hexdigest()


def convert_whiteouts(root: Path) -> None:
    """OCI whiteouts to overlayfs ones: ``.wh.NAME`` -> a 0:0 char device NAME, and
    ``DIR/.wh..wh..opq`` -> the ``trusted.overlay.opaque`` xattr on DIR. The walk follows
    no symlink, so nothing outside ``root`` is touched."""
    for dirpath, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if d.startswith(WHITEOUT_PREFIX)]:
            if not name.startswith(WHITEOUT_PREFIX):
                continue
            marker = Path(dirpath) / name
            if marker.is_dir() and not marker.is_symlink():
                shutil.rmtree(marker)
            else:
                marker.unlink()
            if name == OPAQUE_MARKER:
                os.setxattr(dirpath, OPAQUE_XATTR, b"y")
                continue
            hidden_name = name[len(WHITEOUT_PREFIX):]
            if hidden_name in ("", ".", ".."):
                raise errors.ContainerError(f"Image layer has a whiteout {name!r} that hides no file.")
            hidden = Path(dirpath) / hidden_name
            if hidden.is_dir() and not hidden.is_symlink():
                shutil.rmtree(hidden)
            elif hidden.exists() or hidden.is_symlink():
                hidden.unlink()
            os.mknod(hidden, 0o600 | 0o020000, os.makedev(0, 0))


def unpack_verified(blob: Path, digest: str, dest: Path) -> int:
    """Unpack the layer file ``blob`` into the new directory ``dest``, checking on the way
    that its uncompressed content hashes to ``digest``; returns its uncompressed size."""
    dest.mkdir()
    h = hashlib.sha256()
    size = 0
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(["tar", *TAR_UNPACK_FLAGS, "-xf", "-", "-C", str(dest)],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        stdin = typing.cast(typing.BinaryIO, proc.stdin)
        try:
            with open_uncompressed(blob) as fh:
                for chunk in iter(lambda: fh.read(READ_CHUNK_BYTES), b""):
                    h.update(chunk)
                    size += len(chunk)
                    if stdin is not None:
                        try:
                            stdin.write(chunk)
                        except BrokenPipeError:   # tar stops at the end-of-archive blocks
                            stdin = None
        except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
            proc.kill()
            proc.wait()
            raise errors.ContainerError(f"Layer {digest} is not readable: {exc}.") from exc
        finally:
            if stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    stdin.close()
        try:
            rc = proc.wait(timeout=UNPACK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise errors.ContainerError(f"Unpacking layer {digest} took over {UNPACK_TIMEOUT_S} s.") from None
        err.seek(0)
        why = [line for line in err.read().decode(errors="replace").strip().splitlines()
               if "Exiting with failure status" not in line]
    got = "sha256:" + h.hexdigest()
    if got != digest:
        raise errors.ContainerError(f"Layer {digest} arrived with other content (it hashes to {got}).",
                                    hint="Run the command again; if it fails the same way, the image is damaged.")
    if rc != 0:
        raise errors.ContainerError(f"Unpacking layer {digest} failed: {why[0] if why else rc}.",
                                    hint="The image is damaged or unsafe (a member outside the layer).")
    try:
        convert_whiteouts(dest)
    except OSError as exc:
        raise errors.ContainerError(f"Layer {digest} has whiteouts that cannot be made here: {exc}.") from exc
    return size


class LayerStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / ".incoming"     # uploads and receptions under way

    def entry(self, digest: str) -> Path:
        return self.root / check_digest(digest)

    def tree(self, digest: str) -> Path:
        return self.entry(digest) / "tree"

    def blob(self, digest: str) -> Path:
        return self.entry(digest) / "blob"

    def has(self, digest: str) -> bool:
        e = self.entry(digest)
        return (e / "tree").is_dir() and (e / "blob").is_file()

    def missing(self, digests: list[str]) -> list[str]:
        """The digests of ``digests`` this host lacks, in order, each once."""
        out: list[str] = []
        for d in digests:
            if not self.has(d) and d not in out:
                out.append(d)
        return out

    def lowerdirs(self, digests: list[str], image: str = "") -> list[str]:
        """overlayfs's lowerdir for layers ``digests`` (bottom layer first, as images list
        them): top first, a layer listed twice only at its topmost place (same view)."""
        if not digests:
            raise errors.ContainerError(f"Image {image or '?'} has no layers.")
        absent = self.missing(digests)
        if absent:
            raise errors.ContainerError(
                f"Layer {absent[0]} of image {image or '?'} is not on this host "
                f"({len(absent)} of {len(digests)} missing).",
                hint="The controller sends an image's layers before it runs or moves a container: "
                     "run `cloudmig run` again.")
        out: list[str] = []
        for d in reversed(digests):
            path = str(self.tree(d))
            if path not in out:
                out.append(path)
        return out

    def temp_dir(self, prefix: str) -> Path:
        """A new directory under the store's ``.incoming`` (same file system: renames work)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.incoming.mkdir(mode=0o700, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.incoming))

    def sweep(self, max_age_s: float = STALE_INCOMING_S) -> None:
        """Remove what unfinished uploads left behind long ago (a controller that died)."""
        if not self.incoming.is_dir():
            return
        cutoff = time.time() - max_age_s
        for p in self.incoming.iterdir():
            with contextlib.suppress(OSError):
                if p.lstat().st_mtime < cutoff:
                    shutil.rmtree(p, ignore_errors=True)

    def install(self, blob: Path, digest: str) -> bool:
        """Verify and unpack the layer file ``blob`` and move it into the store as ``digest``
        (the file itself moves: it must be on the store's file system; the caller removes
        whatever is left of its own directory). False if the store had the layer already."""
        hexd = check_digest(digest)
        if self.has(digest):
            return False
        work = self.temp_dir(f"install-{hexd[:12]}-")
        try:
            size = unpack_verified(blob, digest, work / "tree")
            os.rename(blob, work / "blob")
            target = self.root / hexd
            if target.exists() and not self.has(digest):   # a half entry of an older cloudmig
                os.rename(target, self.temp_dir(f"replaced-{hexd[:12]}-") / "old")
            try:
                os.rename(work, target)
            except OSError:
                if self.has(digest):      # another upload of the same layer won the race
                    return False
                raise
            log.info("installed layer %s (%d bytes unpacked)", digest, size)
            return True
        finally:
            shutil.rmtree(work, ignore_errors=True)
