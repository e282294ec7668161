"""cloudmig as a thing to install elsewhere: its own wheel, and the host bootstrap inside it.

    wheel = distribution.own_wheel(Path("/tmp/w"))    # this very cloudmig, as a wheel file
    distribution.fingerprint()                         # changes when any of its files does
    distribution.bootstrap_script()                    # the bundled bootstrap-host
    distribution.setup_this_machine(print)             # `cloudmig setup`: run it here

A controller installs on a host the same cloudmig it runs, whether it runs from a checkout
(the wheel is built from the source tree, without touching the network) or from an installed
wheel (the wheel is put back together from the installed files its RECORD lists).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata
import importlib.resources
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from cloudmig import __version__, errors

DIST = "cloudmig"
WHEEL_BUILD_TIMEOUT_S = 300
PACKAGES = ("cloudmig", "cloudmig.providers", "cloudmig.network")   # where its files live
PACKAGE_DATA = ("bootstrap-host",)     # besides modules (pyproject.toml's package-data)
SOURCE_PARTS = ("pyproject.toml", "README.md", "cloudmig", "providers", "network")   # what a wheel is built from


def bootstrap_script() -> Path:
    path = Path(str(importlib.resources.files("cloudmig") / "bootstrap-host"))
    if not path.is_file():
        raise errors.HostSetupError(f"The host bootstrap is missing from this cloudmig ({path}).",
                                    hint="Reinstall cloudmig.")
    return path


def _source_files() -> list[tuple[str, Path]]:
    """(name inside the package, file) of every module and data file of cloudmig, the same
    whether it runs from a checkout (which maps providers/ and network/ into cloudmig) or
    from an installed wheel (where they sit inside cloudmig/)."""
    found = []
    nested = {p.split(".", 1)[1] for p in PACKAGES if "." in p}
    for name in PACKAGES:
        module = importlib.import_module(name)
        for root in map(Path, module.__path__):
            for f in sorted(root.rglob("*")):
                rel = f.relative_to(root)
                if name == "cloudmig" and rel.parts[0] in nested:
                    continue            # counted as its own package
                if f.is_file() and (f.suffix == ".py" or f.name in PACKAGE_DATA):
                    found.append((f"{name.replace('.', '/')}/{rel}", f))
    return found


def fingerprint() -> str:
    """The version and a digest of every file of this cloudmig: equal on two machines when
    they run the same code."""
    h = hashlib.sha256()
    for rel, f in sorted(_source_files()):
        h.update(rel.encode() + b"\0" + f.read_bytes() + b"\0")
    return f"{__version__}+{h.hexdigest()[:16]}"


def _source_tree() -> Path | None:
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "providers").is_dir() else None


def own_wheel(dest: Path) -> Path:
    """A wheel of this cloudmig in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    tree = _source_tree()
    if tree is not None:
        # built from a copy of what the package is made of: no build/ or egg-info in the tree
        with tempfile.TemporaryDirectory(prefix="cloudmig-wheel-") as tmp:
            for name in SOURCE_PARTS:
                src, dst = tree / name, Path(tmp) / name
                if src.is_dir():
                    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    shutil.copy2(src, dst)
            res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                                  "-q", "-w", str(dest), tmp], capture_output=True, text=True,
                                 timeout=WHEEL_BUILD_TIMEOUT_S)
        if res.returncode != 0:
            raise errors.HostSetupError(f"Building cloudmig's wheel from {tree} failed: "
                                        f"{(res.stderr or res.stdout).strip().splitlines()[-1:]}",
                                        hint="pip and setuptools must be installed beside cloudmig.")
        return max(dest.glob(f"{DIST}-{__version__}-*.whl"), key=lambda p: p.stat().st_mtime)
    return _repack_installed(dest)


def own_wheel_with_dependencies(dest: Path) -> Path:
    """This cloudmig's wheel in ``dest``, and there too the wheels of everything it needs, for
    this machine's Python and platform (downloaded here, where the package index is
    reachable: the host it goes to need not reach it)."""
    wheel = own_wheel(dest)
    res = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
                          "--dest", str(dest), str(wheel)], capture_output=True, text=True,
                         timeout=WHEEL_BUILD_TIMEOUT_S)
    if res.returncode != 0:
        raise errors.HostSetupError(f"Fetching cloudmig's dependencies failed: "
                                    f"{' / '.join((res.stderr or res.stdout).strip().splitlines()[-2:])}",
                                    hint="This machine needs to reach the Python package index once to "
                                         "ship cloudmig to a host (pip caches what it fetched).")
    return wheel


def _repack_installed(dest: Path) -> Path:
    """The installed distribution as a wheel again: the files its RECORD lists inside
    site-packages (not the console scripts pip wrote, not bytecode), with a new RECORD."""
    dist = importlib.metadata.distribution(DIST)
    info = next(p for p in dist.files if p.name == "WHEEL")
    tag = next(line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
               if line.startswith("Tag:"))
    path = dest / f"{DIST}-{dist.version}-{tag}.whl"
    record_name = next(str(p) for p in dist.files if p.name == "RECORD")
    rows = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in dist.files:
            name = str(f)
            if name.startswith("..") or "__pycache__" in name or name == record_name:
                continue
            data = Path(str(f.locate())).read_bytes()
            zf.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append((name, f"sha256={digest}", str(len(data))))
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([*rows, (record_name, "", "")])
        zf.writestr(record_name, out.getvalue())
    return path


# ---------------------------------------------------------------------------------- setup
SUPPORTED_DISTROS = {"debian": ("12", "13")}
STEP_FAILED_RE = re.compile(r'step "([^"]+)" failed')
SETUP_TIMEOUT_S = 30 * 60           # the first run builds CRIU


def failed_step(output: str) -> str:
    """The bootstrap step its output says failed, or '?'."""
    found = STEP_FAILED_RE.search(output)
    return found.group(1) if found else "?"


def check_platform(os_release: Path = Path("/etc/os-release")) -> None:
    try:
        fields = dict(line.split("=", 1) for line in os_release.read_text().splitlines() if "=" in line)
    except OSError:
        fields = {}
    distro = fields.get("ID", "?").strip('"')
    version = fields.get("VERSION_ID", "?").strip('"')
    if version not in SUPPORTED_DISTROS.get(distro, ()):
        wanted = ", ".join(f"{d} {'/'.join(v)}" for d, v in SUPPORTED_DISTROS.items())
        raise errors.HostSetupError(f"This machine runs {distro} {version}; cloudmig sets up {wanted}.",
                                    hint="Use a supported distribution, or install what `cloudmig doctor` "
                                         "lists by hand.")


def setup_this_machine(progress, *, keep_ssh: bool = False) -> None:
    """Run the bundled bootstrap here (root): packages, CRIU, wireguard-go, kernel settings,
    and pycriu into the environment cloudmig runs in. Idempotent: a second run says
    'already' for each step."""
    if os.geteuid() != 0:
        raise errors.ConfigError("cloudmig setup changes this machine (packages, CRIU, kernel "
                                 "settings) and must run as root.", hint="Run: sudo cloudmig setup")
    check_platform()
    argv = ["bash", str(bootstrap_script())]
    if sys.prefix != sys.base_prefix:           # a virtual environment (pipx makes one): pycriu too
        argv += ["--venv", sys.prefix]
    if keep_ssh:
        argv.append("--keep-ssh")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # type: ignore[union-attr]  (PIPE above)
        lines.append(line.rstrip("\n"))
        progress(lines[-1])
    rc = proc.wait(timeout=SETUP_TIMEOUT_S)
    if rc != 0:
        output = "\n".join(lines)
        raise errors.HostSetupError(
            f"Setting up this machine failed at step {failed_step(output)} (exit {rc}): "
            f"{' / '.join(lines[-2:]) or 'no output'}",
            hint="Fix the cause named above (no network to Debian's or PyPI's mirrors?), then run "
                 "`cloudmig setup` again: finished steps are skipped.")
