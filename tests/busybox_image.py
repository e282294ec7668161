"""A small image with a working web server, for tests that need a container image other
than `host`: Debian's static busybox (package busybox-static), its shell and httpd.

    image = make_busybox_image(tmp_path / "web.tar", page="hi\n")        # a rootfs tarball
    lab.cm("run", "h1", "web", "--image", str(image), "--publish", "18080:8080", "--", *HTTPD_COMMAND)
    assert http_get(lab.public_address("h1"), 18080) == "hi\n"

``make_busybox_rootfs`` gives the directory, for images of other formats (OCI layout,
`docker save`) built from it. busybox httpd forks per request and holds no state, so the
container also checkpoints and restores simply.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

from lab import connect

BUSYBOX_APPLETS = ("sh", "httpd", "cat", "echo", "ls", "sleep", "wget")
HTTPD_PORT = 8080
HTTPD_COMMAND = ["/bin/httpd", "-f", "-p", str(HTTPD_PORT), "-h", "/www"]
HTTP_ATTEMPTS = 50           # the server starts within this many tries, 0.1 s apart


def _dynamic_libs(binary: str) -> list[str]:
    """The shared libraries ``binary`` loads ([] for a static one)."""
    res = subprocess.run(["ldd", binary], capture_output=True, text=True)
    libs = []
    for line in res.stdout.splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 else (parts[0] if parts else "")
        if path.startswith("/"):
            libs.append(path)
    return libs


def make_busybox_rootfs(root: Path, page: str = "hello from busybox\n") -> Path:
    """A small rootfs at ``root``: busybox as /bin/busybox, /bin/sh and a few applets linked
    to it, and /www/index.html holding ``page``. Serve it with HTTPD_COMMAND (port 8080)."""
    found = shutil.which("busybox")
    if not found:
        raise AssertionError("busybox is missing: apt-get install busybox-static "
                             "(cloudmig/bootstrap-host --test-tools installs it)")
    busybox = Path(found).resolve()
    (root / "bin").mkdir(parents=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    for lib in _dynamic_libs(str(busybox)):       # none with busybox-static
        dest = root / lib.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(lib).resolve(), dest)
    for applet in BUSYBOX_APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    for d in ("proc", "dev", "sys", "tmp", "etc", "www"):
        (root / d).mkdir(exist_ok=True)
    (root / "www" / "index.html").write_text(page)
    return root


def make_busybox_image(path: Path, page: str = "hello from busybox\n") -> Path:
    """``make_busybox_rootfs`` as a rootfs tarball at ``path`` (an image of one layer)."""
    rootfs = make_busybox_rootfs(path.parent / (path.name + ".rootfs"), page)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(rootfs, arcname=".")
    path.write_bytes(buf.getvalue())
    shutil.rmtree(rootfs)
    return path


def http_get(address: str, port: int, path: str = "/") -> str:
    """The body busybox httpd serves at ``path`` (over a plain socket: no proxy of the
    environment applies), retried while the server starts."""
    last = ""
    for _ in range(HTTP_ATTEMPTS):
        sock, f = connect(address, port)
        with sock, f:
            f.write(f"GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
            f.flush()
            reply = f.read().decode(errors="replace")
        head, _, body = reply.partition("\r\n\r\n")
        if head and " 200 " in head.splitlines()[0] + " ":
            return body
        last = reply
        time.sleep(0.1)
    raise AssertionError(f"no page from {address}:{port}: {last!r}")
