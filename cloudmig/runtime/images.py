"""Images as read-only layers for a container's overlayfs root.

    layers = images.resolve("host", store)              # ["/"]: this machine's root, read-only
    layers = images.resolve("/srv/rootfs", store)       # a rootfs directory
    layers = images.resolve("alpine.tar", store)        # rootfs tarball, `docker save` tarball or OCI archive
    layers = images.resolve("/srv/oci-layout", store)   # an OCI image layout directory

Layers are content-addressed (sha256 of the compressed or plain tar) and unpacked once into
``store/<digest>``; the list is top layer first, as overlayfs's ``lowerdir`` wants it. OCI
whiteouts (``.wh.NAME``, ``.wh..wh..opq``) become overlayfs whiteouts (0:0 char devices, the
``trusted.overlay.opaque`` xattr).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
from pathlib import Path

from cloudmig import errors

log = logging.getLogger(__name__)

HOST_IMAGE = "host"
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"


def resolve(image: str, store: Path) -> list[str]:
    """Lower directories (top first) for ``image``, unpacking layers into ``store`` if needed."""
    if image == HOST_IMAGE:
        return ["/"]
    path = Path(image)
    if not path.exists():
        raise errors.ContainerError(f"Image {image!r} not found: it is neither the built-in image "
                                    "'host' nor an existing directory or tarball.",
                                    hint="Give a rootfs directory/tarball, an OCI layout or a "
                                         "`docker save` tarball.")
    if path.is_dir():
        if (path / "oci-layout").exists():
            return _oci_layout(path, store)
        return [str(path.resolve())]
    if not tarfile.is_tarfile(path):
        raise errors.ContainerError(f"Image {image!r} is a file but not a tar archive.")
    with tarfile.open(path) as tar:
        names = set(tar.getnames())
    if {"manifest.json", "./manifest.json"} & names and not ({"oci-layout", "./oci-layout"} & names):
        return _docker_archive(path, store)
    if {"oci-layout", "./oci-layout"} & names:
        unpacked = _unpack_plain(path, store / "archives")
        return _oci_layout(unpacked, store)
    return [str(_unpack_layer(path, store))]


def layer_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _extract(tar: tarfile.TarFile, dest: Path, members: list[tarfile.TarInfo] | None = None) -> None:
    """Extract refusing members that would land outside ``dest`` (what tarfile's 'tar' filter
    does on Pythons that have it; Debian 12's 3.11.2 does not)."""
    chosen = members if members is not None else tar.getmembers()
    if hasattr(tarfile, "tar_filter"):
        tar.extractall(dest, members=chosen, filter="tar")
        return
    root = os.path.realpath(dest)
    for m in chosen:
        target = os.path.realpath(os.path.join(root, m.name.lstrip("/")))
        if target != root and not target.startswith(root + os.sep):
            raise errors.ContainerError(f"Image layer member {m.name!r} points outside the layer.")
        m.name = m.name.lstrip("/")
    tar.extractall(dest, members=chosen)


def _unpack_plain(archive: Path, store: Path) -> Path:
    dest = store / layer_digest(archive)
    if not dest.exists():
        tmp = dest.with_suffix(".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with tarfile.open(archive) as tar:
            _extract(tar, tmp)
        tmp.rename(dest)
    return dest


def _unpack_layer(tar_path: Path, store: Path, digest: str | None = None) -> Path:
    """Unpack one layer tar (any compression) into store/<digest>, converting whiteouts."""
    digest = digest or layer_digest(tar_path)
    dest = store / digest
    if dest.exists():
        return dest
    tmp = store / (digest + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(tar_path) as tar:
        members = []
        for m in tar:
            base = os.path.basename(m.name.rstrip("/"))
            parent = os.path.dirname(m.name.rstrip("/"))
            if base == OPAQUE_MARKER:
                target = tmp / parent
                target.mkdir(parents=True, exist_ok=True)
                os.setxattr(target, "trusted.overlay.opaque", b"y")
            elif base.startswith(WHITEOUT_PREFIX):
                target = tmp / parent / base[len(WHITEOUT_PREFIX):]
                target.parent.mkdir(parents=True, exist_ok=True)
                os.mknod(target, 0o600 | 0o020000, os.makedev(0, 0))
            else:
                members.append(m)
        _extract(tar, tmp, members)
    tmp.rename(dest)
    log.info("unpacked layer %s", digest[:12])
    return dest


def _blob(layout: Path, digest: str) -> Path:
    algo, _, hexd = digest.partition(":")
    return layout / "blobs" / algo / hexd


def _oci_layout(layout: Path, store: Path) -> list[str]:
    index = json.loads((layout / "index.json").read_text())
    manifests = index.get("manifests") or []
    if not manifests:
        raise errors.ContainerError(f"OCI layout {layout} has no manifests.")
    manifest = json.loads(_blob(layout, manifests[0]["digest"]).read_text())
    if "manifests" in manifest:  # an image index: take the first (linux/amd64 first if listed)
        pick = next((m for m in manifest["manifests"]
                     if m.get("platform", {}).get("architecture") in ("amd64", None)),
                    manifest["manifests"][0])
        manifest = json.loads(_blob(layout, pick["digest"]).read_text())
    layers = [_unpack_layer(_blob(layout, layer["digest"]), store, layer["digest"].split(":")[1])
              for layer in manifest.get("layers", [])]
    return [str(p) for p in reversed(layers)]


def _docker_archive(archive: Path, store: Path) -> list[str]:
    unpacked = _unpack_plain(archive, store / "archives")
    manifest = json.loads((unpacked / "manifest.json").read_text())
    if not manifest:
        raise errors.ContainerError(f"{archive} has an empty manifest.json.")
    layers = [_unpack_layer(unpacked / rel, store) for rel in manifest[0]["Layers"]]
    return [str(p) for p in reversed(layers)]
