"""Images other than `host`: rootfs directory and tarball, OCI layout, `docker save` tarball.

The images are built here from this machine's /bin/sh and its libraries, so no registry is
needed; the OCI and docker-save images have two layers, the second of which deletes a file
of the first (an OCI whiteout) and adds one.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from lab import Lab, new_lab_id


def _libs(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if path.startswith("/"):
            libs.append(path)
    return libs


def make_rootfs(root: Path) -> Path:
    for f in ["/bin/sh", "/bin/cat", "/bin/sleep", *_libs("/bin/sh"), *_libs("/bin/cat")]:
        real = Path(f).resolve()
        dest = root / f.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(real, dest)
    for d in ("proc", "dev", "sys", "tmp"):
        (root / d).mkdir(exist_ok=True)
    (root / "hello").write_text("from layer one\n")
    (root / "doomed").write_text("deleted by layer two\n")
    return root


def _tar_bytes(add) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        add(tar)
    return buf.getvalue()


def _file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def layers(rootfs: Path) -> list[bytes]:
    one = _tar_bytes(lambda t: t.add(rootfs, arcname="."))

    def two_add(t):
        _file(t, "./.wh.doomed", b"")
        _file(t, "./added", b"from layer two\n")
    return [one, _tar_bytes(two_add)]


def make_oci_layout(dest: Path, layer_tars: list[bytes]) -> Path:
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return digest

    descs = []
    for raw in layer_tars:
        gz = gzip.compress(raw)
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                      "digest": "sha256:" + put(gz), "size": len(gz)})
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + put(config),
        "size": len(config)}, "layers": descs}).encode()
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + put(manifest), "size": len(manifest)}]}))
    return dest


def make_docker_save(dest: Path, layer_tars: list[bytes]) -> Path:
    def add(t):
        names = []
        for i, raw in enumerate(layer_tars):
            name = f"layer{i}/layer.tar"
            _file(t, name, raw)
            names.append(name)
        _file(t, "manifest.json", json.dumps([{"Config": "config.json", "RepoTags": ["test:1"],
                                               "Layers": names}]).encode())
        _file(t, "config.json", b"{}")
    dest.write_bytes(_tar_bytes(add))
    return dest


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    base = tmp_path_factory.mktemp("images")
    rootfs = make_rootfs(base / "rootfs")
    tars = layers(rootfs)
    rootfs_tar = base / "rootfs.tar"
    rootfs_tar.write_bytes(tars[0])
    return {"dir": rootfs, "tar": rootfs_tar,
            "oci": make_oci_layout(base / "oci", tars),
            "docker": make_docker_save(base / "docker.tar", tars)}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("lab") / "state", new_lab_id())
    lab.cm("lab", "up", "--hosts", "1")
    try:
        yield lab
    finally:
        lab.cm("lab", "down", check=False)


def _output(lab: Lab, name: str, expect: str) -> str:
    for _ in range(50):
        out = lab.cm("logs", name).stdout
        if expect in out:
            return out
        time.sleep(0.1)
    return out


SCRIPT = "cat /hello; cat /added 2>/dev/null || echo no-added; cat /doomed 2>/dev/null || echo no-doomed; echo END; sleep 600"


@pytest.mark.parametrize("kind,layered", [("dir", False), ("tar", False), ("oci", True), ("docker", True)])
def test_image_kinds(lab, images, kind, layered):
    name = f"img-{kind}"
    lab.cm("run", "h1", name, "--image", str(images[kind]), "--", "/bin/sh", "-c", SCRIPT)
    try:
        out = _output(lab, name, "END")
        assert "from layer one" in out
        if layered:
            assert "from layer two" in out and "no-doomed" in out
        else:
            assert "no-added" in out and "deleted by layer two" in out
    finally:
        lab.cm("rm", name)
