"""Where cloudmig keeps its state and finds its tools.

    >>> from cloudmig import paths
    >>> paths.state_dir()          # $CLOUDMIG_STATE_DIR or /var/lib/cloudmig
    PosixPath('/var/lib/cloudmig')

Every file cloudmig makes lives under the state directory, so one ``rm -r`` (or
``cloudmig lab down``) leaves nothing behind; tests point it at a temporary folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

DEFAULT_STATE_DIR = "/var/lib/cloudmig"
CRIU_CANDIDATES = ("/usr/local/sbin/criu", "/usr/sbin/criu")


def state_dir() -> Path:
    return Path(os.environ.get("CLOUDMIG_STATE_DIR", DEFAULT_STATE_DIR))


def host_state_dir(name: str) -> Path:
    """What the controller keeps about host ``name`` (agent token, SSH key, known_hosts):
    ``state_dir()/hosts/NAME``, removed when the host is destroyed."""
    return state_dir() / "hosts" / name


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) readable by root only."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_secret(path: Path, data: str | bytes) -> None:
    """Write a secret file with mode 0600 from the first byte on."""
    ensure_private_dir(path.parent)
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, raw)
    finally:
        os.close(fd)


def criu_binary() -> str | None:
    """The criu that cloudmig drives: $CLOUDMIG_CRIU, the bootstrap's, or PATH's."""
    env = os.environ.get("CLOUDMIG_CRIU")
    if env:
        return env if os.path.exists(env) else None
    for cand in CRIU_CANDIDATES:
        if os.access(cand, os.X_OK):
            return cand
    return shutil.which("criu")


def tool(name: str) -> str | None:
    """A helper program, overridable as $CLOUDMIG_<NAME> (tests use this for stubs)."""
    env = os.environ.get("CLOUDMIG_" + name.upper().replace("-", "_"))
    if env is not None:
        return env if env and os.access(env, os.X_OK) else None
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin")
