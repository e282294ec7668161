"""Images other than `host`: rootfs directory and tarball, OCI layout, `docker save` tarball,
registry references; and how their layers travel to hosts.

The images are built here from this machine's /bin/sh and its libraries, or from Debian's
static busybox (``make_busybox_image``: a small image with a working web server, for reuse by
other tests); the OCI and docker-save images have two layers, the second of which deletes a
file of the first (an OCI whiteout) and adds one. The registry is Debian's docker-registry
on loopback, filled with skopeo.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from cloudmig import errors
from cloudmig.agent import dial, layer_ops
from cloudmig.control import layers as layer_shipping
from cloudmig.inventory import Inventory
from cloudmig.runtime import images as image_sources
from cloudmig.runtime import layer_store, sockets
from busybox_image import HTTPD_COMMAND, http_get, make_busybox_image, make_busybox_rootfs
from lab import Lab, connect, new_lab_id


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
    diff_ids = ["sha256:" + hashlib.sha256(raw).hexdigest() for raw in layer_tars]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
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
    lab.cm("lab", "up", "--hosts", "2")
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


def host_layers(lab: Lab, host: str) -> dict[str, tuple[int, int]]:
    """The host's layer store: digest -> (inode, mtime_ns) of each complete entry."""
    store = lab.state_dir / "hosts" / host / "layers"
    out = {}
    for p in store.iterdir() if store.is_dir() else []:
        if (p / "tree").is_dir() and (p / "blob").is_file():
            st = p.stat()
            out["sha256:" + p.name] = (st.st_ino, st.st_mtime_ns)
    return out


def _tar_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------- layers travel
def test_image_file_deleted_after_run_keeps_running(lab, tmp_path):
    image = make_busybox_image(tmp_path / "web.tar", page="served from a layer\n")
    digest = _tar_digest(image.read_bytes())
    res = lab.cm("run", "h1", "bb-web", "--image", str(image), "--publish", "18080:8080", "--", *HTTPD_COMMAND)
    try:
        assert "sending layer" in res.stderr
        image.unlink()                      # the controller's file is gone: the host never needed it
        assert http_get(lab.public_address("h1"), 18080) == "served from a layer\n"
        assert lab.inventory()["containers"]["bb-web"]["layers"] == [digest]
        assert digest in host_layers(lab, "h1")
        tree = lab.state_dir / "hosts" / "h1" / "layers" / digest[7:] / "tree"
        assert (tree / "www" / "index.html").read_text() == "served from a layer\n"
        meta = json.loads((lab.state_dir / "hosts" / "h1" / "containers" / "bb-web" / "meta.json").read_text())
        assert meta["layers"] == [digest] and meta["lowerdirs"] == [str(tree)]
        [row] = [r for r in lab.ps() if r["name"] == "bb-web"]
        assert row["state"] == "running"
        assert not list((lab.state_dir / "tmp").iterdir())      # the controller's work is gone too
    finally:
        lab.cm("rm", "bb-web", check=False)


def test_a_container_from_a_deleted_tarball_migrates_with_its_layers(lab, tmp_path):
    """The destination never saw the file: the migration's prepare sends it the layer it lacks
    (through the tunnel, from the source), and only the first time."""
    image = make_busybox_image(tmp_path / "mover.tar", page="moved with its layer\n")
    digest = _tar_digest(image.read_bytes())
    lab.cm("run", "h1", "bb-mover", "--image", str(image), "--publish", "18081:8080", "--", *HTTPD_COMMAND)
    try:
        image.unlink()
        assert digest not in host_layers(lab, "h2")
        there = tmp_path / "there.json"
        lab.cm("migrate", "bb-mover", "--to", "h2", "--report", str(there), timeout=600)
        assert json.loads(there.read_text())["layers_bytes"] > 0
        assert digest in host_layers(lab, "h2")
        for host in ("h1", "h2"):       # the forward and the new home
            assert http_get(lab.public_address(host), 18081) == "moved with its layer\n"
        back = tmp_path / "back.json"
        lab.cm("migrate", "bb-mover", "--to", "h1", "--report", str(back), timeout=600)
        assert json.loads(back.read_text())["layers_bytes"] == 0     # h1 kept it
        [row] = [r for r in lab.ps() if r["name"] == "bb-mover"]
        assert row["host"] == "h1" and row["state"] == "running"
        assert http_get(lab.public_address("h1"), 18081) == "moved with its layer\n"
    finally:
        lab.cm("rm", "bb-mover", check=False)


def test_second_run_of_an_image_sends_nothing(lab, tmp_path):
    image = make_busybox_image(tmp_path / "again.tar", page="twice\n")
    digest = _tar_digest(image.read_bytes())
    first = lab.cm("run", "h1", "bb-one", "--image", str(image), "--", *HTTPD_COMMAND)
    try:
        assert first.stderr.count("sending layer") == 1
        before = host_layers(lab, "h1")
        second = lab.cm("run", "h1", "bb-two", "--image", str(image), "--", *HTTPD_COMMAND)
        assert "sending layer" not in second.stderr
        assert host_layers(lab, "h1") == before          # the same entries, untouched
        inv = lab.inventory()["containers"]
        assert inv["bb-one"]["layers"] == inv["bb-two"]["layers"] == [digest]
        assert not list((lab.state_dir / "hosts" / "h1" / "layers" / ".incoming").iterdir())
    finally:
        lab.cm("rm", "bb-two", check=False)
        lab.cm("rm", "bb-one", check=False)


def test_layers_between_hosts_through_the_tunnel(lab, tmp_path):
    """The operations a migration's prepare uses: h2 gets from h1, through their tunnel,
    exactly the layers it lacks, verified."""
    images_dir = tmp_path / "oci"
    tars = layers(make_busybox_rootfs(tmp_path / "rootfs", page="between hosts\n"))
    oci = make_oci_layout(images_dir, tars)
    digests = [_tar_digest(t) for t in tars]
    lab.cm("run", "h1", "bb-src", "--image", str(oci), "--", *HTTPD_COMMAND)
    try:
        up = lab.cm("tunnel", "up", "h1", "h2", check=False)     # a migration may have made it
        assert up.returncode == 0 or "already up" in up.stderr, up.stderr
        data = Inventory(lab.state_dir / "inventory.json").read()
        dst_address = data.host("h2").overlay_address
        with dial.connect(data.host("h1")) as src, dial.connect(data.host("h2")) as dst:
            assert dst.call("layers.missing", digests=digests) == digests
            sent = layer_shipping.copy_between(src, dst, digests, dst_address=dst_address)
            h1_store = lab.state_dir / "hosts" / "h1" / "layers"
            assert sent == sum((h1_store / d[7:] / "blob").stat().st_size for d in digests)
            assert dst.call("layers.missing", digests=digests) == []
            assert layer_shipping.copy_between(src, dst, digests, dst_address=dst_address) == 0
            # a receiver told to expect a layer that never comes says so
            rx = dst.call("layers.receive", bind_address=dst_address, digests=["sha256:" + "0" * 64])
            src.call("layers.send", digests=[], address=dst_address, port=rx["port"], token=rx["token"])
            with pytest.raises(errors.MigrationError, match="did not arrive"):
                dst.call("layers.receive_wait", token=rx["token"])
        h2 = host_layers(lab, "h2")
        assert set(digests) <= set(h2)
        tree = lab.state_dir / "hosts" / "h2" / "layers" / digests[1][7:] / "tree"
        assert (tree / "added").read_text() == "from layer two\n"
        assert os.stat(tree / "doomed").st_rdev == os.makedev(0, 0)      # the whiteout
        assert not list((lab.state_dir / "hosts" / "h2" / "layers" / ".incoming").iterdir())
    finally:
        lab.cm("rm", "bb-src", check=False)
        lab.cm("tunnel", "down", "h1", "h2", check=False)


# ---------------------------------------------------------------------------- a registry
@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Debian's docker-registry on 127.0.0.1 (a free port, storage of its own): its address."""
    base = tmp_path_factory.mktemp("registry")
    port = sockets.free_port("127.0.0.1")
    config = base / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
                      f"    rootdirectory: {base / 'storage'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    binary = shutil.which("docker-registry")
    assert binary, "docker-registry is missing: cloudmig/bootstrap-host --test-tools installs it"
    with open(base / "registry.log", "wb") as log:
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        sock, f = connect("127.0.0.1", port)
        sock.close()
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def push(layout: Path, registry: str, ref: str) -> str:
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}",
                    f"docker://{registry}/{ref}"], check=True, capture_output=True, timeout=120)
    return f"{registry}/{ref}"


def test_registry_image_runs(lab, registry, tmp_path):
    tars = layers(make_busybox_rootfs(tmp_path / "rootfs", page="from the registry\n"))
    ref = push(make_oci_layout(tmp_path / "oci", tars), registry, "web/busybox:1")
    digests = [_tar_digest(t) for t in tars]
    lacking = set(digests) - set(host_layers(lab, "h1"))    # layer two may be there from another test
    res = lab.cm("run", "h1", "bb-reg", "--image", ref, "--publish", "18081:8080", "--", *HTTPD_COMMAND)
    try:
        assert http_get(lab.public_address("h1"), 18081) == "from the registry\n"
        assert lab.inventory()["containers"]["bb-reg"]["layers"] == digests
        assert set(digests) <= set(host_layers(lab, "h1"))
        assert res.stderr.count("sending layer") == len(lacking) >= 1
        # the same image named with docker:// finds every layer on the host already
        again = lab.cm("run", "h1", "bb-reg2", "--image", f"docker://{ref}", "--", *HTTPD_COMMAND)
        assert "sending layer" not in again.stderr
        lab.cm("rm", "bb-reg2")
    finally:
        lab.cm("rm", "bb-reg", check=False)


def test_bad_registry_input_is_refused_and_changes_nothing(lab, registry):
    before = {"containers": sorted(lab.inventory()["containers"]), "netns": lab.netns(),
              "layers": host_layers(lab, "h1")}
    silent = f"127.0.0.1:{sockets.free_port('127.0.0.1')}"
    cases = [
        (f"{silent}/web:1", "does not answer"),
        (f"{registry}/no/such-image:1", "does not exist"),
        (f"docker://{registry}/web/busybox:no-such-tag", "does not exist"),
    ]
    for image, message in cases:
        res = lab.cm("run", "h1", "bad-img", "--image", image, "--", "/bin/sh", check=False)
        assert res.returncode != 0, image
        assert "Error:" in res.stderr and message in res.stderr, (image, res.stderr)
        assert "Traceback" not in res.stderr
        assert "level=" not in res.stderr, res.stderr           # our sentence, not skopeo's log
    after = {"containers": sorted(lab.inventory()["containers"]), "netns": lab.netns(),
             "layers": host_layers(lab, "h1")}
    assert after == before
    assert not (lab.state_dir / "hosts" / "h1" / "containers" / "bad-img").exists()


def test_a_path_is_never_opened_by_a_host(lab):
    """An image given without its layers (what an old record would send) is refused by the
    host instead of being looked up on the host's own disk."""
    data = Inventory(lab.state_dir / "inventory.json").read()
    with dial.connect(data.host("h1")) as agent:
        with pytest.raises(errors.ContainerError, match="without its layers"):
            agent.call("container.run", name="no-layers", image="/", command=["/bin/sh"], env={},
                       service_ip="100.96.9.9", public_ip=data.host("h1").public_address, ports=[])
        with pytest.raises(errors.ContainerError, match="not on this host"):
            agent.call("container.run", name="no-layers", image="x", command=["/bin/sh"], env={},
                       service_ip="100.96.9.9", public_ip=data.host("h1").public_address, ports=[],
                       layers=["sha256:" + "1" * 64])
    assert "no-layers" not in [r["name"] for r in lab.ps()]
    assert not (lab.state_dir / "hosts" / "h1" / "containers" / "no-layers").exists()


# ---------------------------------------------------------------------------- the store itself
def _layer_file(path: Path, add, compress: bool = False) -> tuple[Path, str]:
    raw = _tar_bytes(add)
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path, _tar_digest(raw)


def test_store_installs_verified_layers_once(tmp_path):
    store = layer_store.LayerStore(tmp_path / "layers")

    def add(t):
        _file(t, "./dir/.wh..wh..opq", b"")
        _file(t, "./dir/kept", b"kept\n")
        _file(t, "./.wh.gone", b"")
    blob, digest = _layer_file(tmp_path / "l.tgz", add, compress=True)
    assert store.missing([digest, digest]) == [digest]
    assert store.install(blob, digest) is True
    tree = store.tree(digest)
    assert (tree / "dir" / "kept").read_text() == "kept\n"
    assert os.getxattr(tree / "dir", "trusted.overlay.opaque") == b"y"
    assert not (tree / "dir" / ".wh..wh..opq").exists() and not (tree / ".wh.gone").exists()
    assert os.stat(tree / "gone").st_rdev == os.makedev(0, 0)
    assert store.blob(digest).read_bytes()[:2] == b"\x1f\x8b"        # kept as it travelled
    assert store.missing([digest]) == []
    again, _ = _layer_file(tmp_path / "l2.tgz", add, compress=True)
    assert store.install(again, digest) is False                    # already there
    assert store.lowerdirs([digest, digest]) == [str(tree)]


def test_store_refuses_wrong_content_and_escapes(tmp_path):
    store = layer_store.LayerStore(tmp_path / "layers")
    blob, digest = _layer_file(tmp_path / "a.tar", lambda t: _file(t, "./a", b"a"))
    wrong = "sha256:" + "2" * 64
    with pytest.raises(errors.ContainerError, match="other content"):
        store.install(blob, wrong)
    assert store.missing([wrong]) == [wrong] and not list(store.incoming.iterdir())
    evil, evil_digest = _layer_file(tmp_path / "evil.tar", lambda t: _file(t, "../../escaped", b"x"))
    with pytest.raises(errors.ContainerError):
        store.install(evil, evil_digest)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "layers" / "escaped").exists()
    for bad in ("../etc", "sha256:../../x", "sha256:" + "A" * 64):
        with pytest.raises(errors.ConfigError):
            store.missing([bad])


def test_put_in_chunks_is_checked_and_idempotent(tmp_path):
    ops = layer_ops.LayerOps(tmp_path / "layers")
    blob, digest = _layer_file(tmp_path / "b.tar", lambda t: _file(t, "./big", os.urandom(300_000)))
    data = blob.read_bytes()
    chunks = [data[i:i + 100_000] for i in range(0, len(data), 100_000)]
    res = ops.put(digest=digest, data=base64.b64encode(chunks[0]).decode())
    upload = res["upload"]
    with pytest.raises(errors.ProtocolError, match="has 100000 bytes"):
        ops.put(digest=digest, data=base64.b64encode(chunks[1]).decode(), upload=upload, offset=5)
    offset = len(chunks[0])
    for i, chunk in enumerate(chunks[1:], 1):
        res = ops.put(digest=digest, data=base64.b64encode(chunk).decode(), upload=upload,
                      offset=offset, done=i == len(chunks) - 1)
        offset += len(chunk)
    assert res["stored"] and ops.missing([digest]) == []
    assert ops.put(digest=digest, data="")["present"] is True
    assert not list(ops.store.incoming.iterdir())


def test_resolve_gives_the_same_digest_for_the_same_directory(tmp_path, images):
    one = image_sources.resolve(str(images["dir"]), tmp_path / "w1")
    two = image_sources.resolve(str(images["dir"]), tmp_path / "w2")
    assert [l.digest for l in one] == [l.digest for l in two] and len(one) == 1
    oci = image_sources.resolve(str(images["oci"]), tmp_path / "w3")
    docker = image_sources.resolve(str(images["docker"]), tmp_path / "w4")
    assert [l.digest for l in oci] == [l.digest for l in docker]     # diff_ids == computed digests
    assert image_sources.resolve("host", tmp_path / "w5") == []
