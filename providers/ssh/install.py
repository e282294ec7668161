"""Put cloudmig on an adopted host: the controller's own cloudmig, as a wheel, over SSH.

    install.ensure(session, layout, progress)   # skips if LAYOUT.venv runs this very code

The controller ships the cloudmig it runs (cloudmig.distribution.own_wheel: built from the
checkout, or put back together from the installed wheel) and the bundled host bootstrap,
over SSH's stdin, to ``<venv>/../dist/<fingerprint>/``, then runs ``bootstrap-host --keep-ssh
--venv V --wheel W`` there. cloudmig's dependencies travel as wheels beside it, so the host
needs no route to the package index (Debian's mirrors, for the packages and CRIU's source,
still, where they are not installed yet). A host
whose cloudmig has the same fingerprint (version and a digest of its files) is left alone.
"""

from __future__ import annotations

import shlex
import tempfile
from pathlib import Path

from cloudmig import distribution, errors
from cloudmig.providers import Progress
from cloudmig.providers.ssh.remote import AgentLayout
from cloudmig.providers.ssh.session import Session

BOOTSTRAP_TIMEOUT_S = 30 * 60       # first run builds CRIU and fills a venv


def installed(session: Session, layout: AgentLayout) -> str | None:
    """The fingerprint of the cloudmig at layout.venv, or None if there is none."""
    venv = shlex.quote(layout.venv)
    res = session.run(f"[ -x {venv}/bin/cloudmig ] && {venv}/bin/python -c "
                      f"'from cloudmig import distribution; print(distribution.fingerprint())' 2>/dev/null; true",
                      what="looking for cloudmig")
    return res.stdout.strip() or None


def ensure(session: Session, layout: AgentLayout, progress: Progress,
           timeout_s: float = BOOTSTRAP_TIMEOUT_S) -> None:
    name = session.record.name
    want = distribution.fingerprint()
    if installed(session, layout) == want:
        progress(f"{name}: cloudmig {want} already installed at {layout.venv}")
        return
    dest = f"{Path(layout.venv).parent}/dist/{want}"
    q = shlex.quote(dest)
    with tempfile.TemporaryDirectory(prefix="cloudmig-ship-") as tmp:
        wheel = distribution.own_wheel_with_dependencies(Path(tmp))
        wheels = sorted(Path(tmp).glob("*.whl"))
        size_kib = sum(w.stat().st_size for w in wheels) // 1024
        progress(f"{name}: shipping cloudmig {want} and {len(wheels) - 1} dependencies ({size_kib} KiB of "
                 f"wheels) to {dest}")
        session.run(f"umask 022; rm -rf {q} && mkdir -p {q} && cat > {q}/bootstrap-host",
                    input=distribution.bootstrap_script().read_bytes(), what="sending the bootstrap")
        for w in wheels:
            session.run(f"cat > {q}/{shlex.quote(w.name)}", input=w.read_bytes(), what=f"sending {w.name}")
    progress(f"{name}: running the bootstrap there (the first time builds CRIU: minutes)")
    res = session.run(f"bash {q}/bootstrap-host --keep-ssh --venv {shlex.quote(layout.venv)} "
                      f"--wheel {q}/{shlex.quote(wheel.name)} 2>&1",
                      check=False, timeout_s=timeout_s, what="the host bootstrap",
                      on_line=lambda line: progress(f"{name}:   {line}"))
    if res.rc != 0:
        tail = " / ".join(res.stdout.strip().splitlines()[-3:]) or "no output"
        raise errors.ProviderError(
            f"The bootstrap of {name} failed at step {distribution.failed_step(res.stdout)} (exit {res.rc}): {tail}",
            hint=f"Fix it on the host (the full output is above; rerun: bash {dest}/bootstrap-host "
                 f"--keep-ssh --venv {layout.venv} --wheel {dest}/{wheel.name}), then add the host again.",
            code="bootstrap")
    progress(f"{name}: cloudmig {want} installed at {layout.venv}")
