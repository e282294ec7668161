"""Put cloudmig on an adopted host: ship this checkout over SSH and run the host bootstrap there.

    install.ensure(session, layout, progress)   # skips if LAYOUT.venv already has this version

cloudmig is not on PyPI, so the controller ships its own source: ``git archive HEAD`` of the
checkout it runs from (committed files only), copied over SSH's stdin, unpacked to
``<venv>/../src/<commit>``, then ``scripts/bootstrap-host --keep-ssh --venv V --project DIR``
runs on the host (it needs Debian's and PyPI's mirrors from there).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from cloudmig import __version__, errors
from cloudmig.providers import Progress
from cloudmig.providers.ssh.remote import AgentLayout
from cloudmig.providers.ssh.session import Session

BOOTSTRAP_TIMEOUT_S = 30 * 60       # first run builds CRIU and fills a venv
STAMP_NAME = ".cloudmig-source"     # in the venv: the commit it was installed from
_STEP_RE = re.compile(r'step "([^"]+)" failed')


def project_root() -> Path:
    """The source tree this cloudmig runs from (a git checkout), or a ConfigError."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not (root / ".git").exists():
        raise errors.ConfigError(
            f"cloudmig can ship itself to a host only from a git checkout; {root} is not one.",
            hint="Install cloudmig on the host by hand (scripts/bootstrap-host --venv /opt/cloudmig/venv "
                 "--project DIR), then adopt it with --option remote_venv=/opt/cloudmig/venv.")
    return root


def _git(root: Path, *args: str) -> bytes:
    try:
        return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise errors.ConfigError(f"git {' '.join(args)} failed in {root}: {exc}.",
                                 hint="Ship from a clean git checkout of cloudmig.") from exc


def installed(session: Session, layout: AgentLayout) -> tuple[str | None, str | None]:
    """(version, source commit or None) of the cloudmig at layout.venv, or (None, None)."""
    venv = shlex.quote(layout.venv)
    res = session.run(f"{venv}/bin/python -c 'import cloudmig; print(cloudmig.__version__)' 2>/dev/null "
                      f"&& [ -x {venv}/bin/cloudmig ] && cat {venv}/{STAMP_NAME} 2>/dev/null; true",
                      what="looking for cloudmig")
    lines = res.stdout.split()
    return (lines[0] if lines else None), (lines[1] if len(lines) > 1 else None)


def ensure(session: Session, layout: AgentLayout, progress: Progress) -> None:
    name = session.record.name
    version, source = installed(session, layout)
    if version == __version__ and source is None:
        progress(f"{name}: cloudmig {version} already installed at {layout.venv}")
        return
    root = project_root()
    commit = _git(root, "rev-parse", "HEAD").decode().strip()
    if version == __version__ and source == commit:
        progress(f"{name}: cloudmig {version} ({commit[:12]}) already installed at {layout.venv}")
        return
    if _git(root, "status", "--porcelain", "--untracked-files=no").strip():
        progress(f"{name}: note: uncommitted changes in {root} are not shipped (commit {commit[:12]} is)")
    tarball = _git(root, "archive", "--format=tar.gz", commit)
    dest = f"{Path(layout.venv).parent}/src/{commit}"
    q = shlex.quote(dest)
    progress(f"{name}: shipping cloudmig {__version__} ({commit[:12]}, {len(tarball) // 1024} KiB) to {dest}")
    session.run(f"umask 022; rm -rf {q} && mkdir -p {q} && tar -xzf - -C {q}", input=tarball,
                what="unpacking cloudmig")
    progress(f"{name}: running scripts/bootstrap-host there (the first time builds CRIU: minutes)")
    res = session.run(f"bash {q}/scripts/bootstrap-host --keep-ssh --venv {shlex.quote(layout.venv)} "
                      f"--project {q} 2>&1 && echo {shlex.quote(commit)} > {shlex.quote(layout.venv)}/{STAMP_NAME}",
                      check=False, timeout_s=BOOTSTRAP_TIMEOUT_S, what="the host bootstrap",
                      on_line=lambda line: progress(f"{name}:   {line}"))
    if res.rc != 0:
        step = _STEP_RE.search(res.stdout)
        tail = " / ".join(res.stdout.strip().splitlines()[-3:]) or "no output"
        raise errors.ProviderError(
            f"The bootstrap of {name} failed at step {step.group(1) if step else '?'} (exit {res.rc}): {tail}",
            hint=f"Fix it on the host (the full output is above; rerun: bash {dest}/scripts/bootstrap-host "
                 f"--keep-ssh --venv {layout.venv} --project {dest}), then add the host again.",
            code="bootstrap")
    progress(f"{name}: cloudmig {__version__} installed at {layout.venv}")
