"""What ``--image`` names, resolved on the controller into content-addressed layers.

    with tempfile.TemporaryDirectory() as work:
        layers = images.resolve("web.tar", Path(work))   # [Layer(digest="sha256:...", blob=..., size=...)]
    images.resolve("host", work)                          # []: the host's own root, read-only

Sources: the built-in image ``host`` (no layers: each host's own root file system, a lab
convenience); a rootfs directory (tarred here into one layer); a rootfs tarball (one layer,
any compression); an OCI image layout, as a directory or a tar; a ``docker save`` tarball;
a registry reference (``registry.example:5000/app:1``, ``docker://...``), pulled here with
skopeo (cloudmig.runtime.registry) into an OCI layout. Layers are listed bottom first, as
images list them. A layer's digest is the sha256 of its uncompressed tar (cloudmig.runtime.
layer_store), taken from the image's config (``rootfs.diff_ids``) when it has one, else
computed; a host checks it again whenever a layer arrives.

Only the controller reads what the user named: a path means nothing on another machine.
Hosts get layers by digest (cloudmig.control.layers sends them, cloudmig.runtime.layer_store
keeps them) and build a container's root from digests alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import shutil
import tarfile
from pathlib import Path

from cloudmig import errors
from cloudmig.runtime import layer_store, registry

HOST_IMAGE = "host"
METADATA_MAX_BYTES = 16 * 1024 * 1024   # manifests and configs are small; refuse huge ones
LINK_HOPS_MAX = 8                       # `docker save` links identical layers to each other
BLOB_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


@dataclasses.dataclass(frozen=True)
class Layer:
    digest: str      # sha256:<hex> of the uncompressed tar: what hosts store it under
    blob: Path       # the layer as found here (a tar, maybe compressed): what is sent
    size: int        # bytes of ``blob``


def resolve(image: str, work: Path) -> list[Layer]:
    """The layers of ``image``, bottom first ([] for ``host``). Files that have to be made
    or taken out of an archive go into ``work``, which the caller removes afterwards."""
    if image == HOST_IMAGE:
        return []
    path = Path(image)
    if not image.startswith("docker://") and (path.exists() or not registry.is_reference(image)):
        return _resolve_path(image, path, work)
    layout = registry.pull(image, work / "pull")
    return _oci(_DirSource(layout), image)


def _resolve_path(image: str, path: Path, work: Path) -> list[Layer]:
    if not path.exists():
        raise errors.ConfigError(
            f"Image {image!r} not found: it is neither the built-in image 'host', an existing "
            "directory or tarball, nor a registry reference with a tag.",
            hint="Give a rootfs directory/tarball, an OCI layout, a `docker save` tarball or "
                 "REGISTRY/NAME:TAG.")
    if path.is_dir():
        if (path / "oci-layout").exists():
            return _oci(_DirSource(path), image)
        if path.resolve() == Path("/"):
            raise errors.ConfigError("Image '/' would copy this whole machine.",
                                     hint="Use --image host for the host's own root file system.")
        return [_layer(_tar_directory(path, work / "rootfs.tar"))]
    if layer_store.compression(path) == "zstd":     # tarfile cannot look inside: a rootfs tarball
        return [_layer(path)]
    if not tarfile.is_tarfile(path):
        raise errors.ConfigError(f"Image {image!r} is a file but not a tar archive.",
                                 hint="Give a rootfs tarball, a `docker save` tarball or an OCI archive.")
    try:
        with tarfile.open(path) as tar:
            src = _TarSource(tar, work / "blobs")
            if "manifest.json" in src.names and "oci-layout" not in src.names:
                return _docker_archive(src, image)
            if "oci-layout" in src.names:
                return _oci(src, image)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise errors.ContainerError(f"Cannot read image {image!r}: {exc}.") from exc
    return [_layer(path)]          # a rootfs tarball is one layer, as it is


def _layer(blob: Path, digest: str | None = None) -> Layer:
    return Layer(digest=digest or layer_store.tar_digest(blob), blob=blob, size=blob.stat().st_size)


def _tar_directory(root: Path, out: Path) -> Path:
    """A rootfs directory as one layer tar. The same directory gives the same bytes (tarfile
    walks names sorted), so the same digest: running it again sends nothing."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(root, arcname=".")
    return out


# ------------------------------------------------------------------ where image files are
def _clean_rel(rel: object) -> str:
    """A relative name inside an image (from its own JSON), refused if it leaves the image."""
    if not isinstance(rel, str) or not rel:
        raise errors.ContainerError(f"The image names a file {rel!r}, which is not a path.")
    norm = os.path.normpath(rel.lstrip("/"))
    if norm.startswith(".."):
        raise errors.ContainerError(f"The image names a file outside itself: {rel!r}.")
    return norm


def _blob_rel(digest: object) -> str:
    if not isinstance(digest, str) or not BLOB_RE.match(digest):
        raise errors.ContainerError(f"The image names a blob {digest!r}, which is not sha256:<64 hex>.")
    return "blobs/sha256/" + digest.split(":", 1)[1]


class _DirSource:
    """An image laid out in a directory (an OCI layout)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def json(self, rel: str):
        p = self.file(rel)
        if p.stat().st_size > METADATA_MAX_BYTES:
            raise errors.ContainerError(f"{p} is too big for image metadata.")
        return _parse_json(p.read_bytes(), p)

    def file(self, rel: str) -> Path:
        p = self.root / _clean_rel(rel)
        if not p.is_file():
            raise errors.ContainerError(f"Image {self.root} lacks {rel}.")
        return p


class _TarSource:
    """An image inside a tar archive (``docker save``, an OCI archive): files are looked up
    by name and copied out one by one, never extracted wholesale."""

    def __init__(self, tar: tarfile.TarFile, out: Path) -> None:
        self.tar = tar
        self.out = out
        self.members = {os.path.normpath(m.name.lstrip("/")): m for m in tar.getmembers()}
        self.names = {n for n, m in self.members.items() if m.isfile()}

    def _member(self, rel: str) -> tarfile.TarInfo:
        name = _clean_rel(rel)
        for _ in range(LINK_HOPS_MAX):
            m = self.members.get(name)
            if m is None:
                raise errors.ContainerError(f"The image archive lacks {rel}.")
            if m.isfile():
                return m
            if m.issym():
                name = _clean_rel(os.path.join(os.path.dirname(name), m.linkname))
            elif m.islnk():
                name = _clean_rel(m.linkname)
            else:
                raise errors.ContainerError(f"{rel} in the image archive is not a file.")
        raise errors.ContainerError(f"{rel} in the image archive is a loop of links.")

    def json(self, rel: str):
        m = self._member(rel)
        if m.size > METADATA_MAX_BYTES:
            raise errors.ContainerError(f"{rel} is too big for image metadata.")
        return _parse_json(self.tar.extractfile(m).read(), rel)  # type: ignore[union-attr]

    def file(self, rel: str) -> Path:
        m = self._member(rel)
        self.out.mkdir(parents=True, exist_ok=True)
        dest = self.out / f"{len(list(self.out.iterdir()))}.layer"
        with self.tar.extractfile(m) as src, open(dest, "wb") as dst:  # type: ignore[union-attr]
            shutil.copyfileobj(src, dst, 1024 * 1024)
        return dest


def _parse_json(raw: bytes, where: object):
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise errors.ContainerError(f"{where} in the image is not valid JSON ({exc}).") from exc


def _diff_ids(config: object, count: int) -> list[str] | None:
    """The uncompressed layer digests an image's config lists, if it lists them right."""
    ids = (config.get("rootfs") or {}).get("diff_ids") if isinstance(config, dict) else None
    if isinstance(ids, list) and len(ids) == count and all(
            isinstance(i, str) and layer_store.DIGEST_RE.match(i) for i in ids):
        return ids
    return None


# ------------------------------------------------------------------ formats
def _oci(src: _DirSource | _TarSource, image: str) -> list[Layer]:
    index = src.json("index.json")
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not manifests:
        raise errors.ContainerError(f"OCI image {image!r} has no manifests.")
    desc = _pick_platform(manifests)
    manifest = src.json(_blob_rel(desc.get("digest")))
    if "manifests" in manifest:    # an image index: the one for this machine's architecture
        manifest = src.json(_blob_rel(_pick_platform(manifest["manifests"]).get("digest")))
    descs = manifest.get("layers") or []
    if not descs:
        raise errors.ContainerError(f"OCI image {image!r} has no layers.")
    config = src.json(_blob_rel(manifest["config"]["digest"])) if manifest.get("config") else None
    ids = _diff_ids(config, len(descs))
    return [_layer(src.file(_blob_rel(d.get("digest"))), ids[i] if ids else None)
            for i, d in enumerate(descs)]


def _pick_platform(manifests: list) -> dict:
    arch = _ARCH.get(platform.machine(), platform.machine())
    for m in manifests:
        plat = m.get("platform") or {}
        if plat.get("architecture") in (arch, None) and plat.get("os") in ("linux", None):
            return m
    return manifests[0]


def _docker_archive(src: _TarSource, image: str) -> list[Layer]:
    manifest = src.json("manifest.json")
    if not manifest or not isinstance(manifest, list):
        raise errors.ContainerError(f"Image {image!r} has an empty manifest.json.")
    entry = manifest[0]
    rels = entry.get("Layers") or []
    if not rels:
        raise errors.ContainerError(f"Image {image!r} has no layers.")
    config = src.json(entry["Config"]) if entry.get("Config") else None
    ids = _diff_ids(config, len(rels))
    return [_layer(src.file(rel), ids[i] if ids else None) for i, rel in enumerate(rels)]
