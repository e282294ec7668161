"""A PostgreSQL server of a test's own (Debian's postgresql package): a fresh cluster in a
temporary directory, run as the postgres user, listening on a unix socket only (no TCP), one
database created; stopped and removed afterwards.

    with postgres_server() as url:      # postgresql://postgres@/cloudmig?host=/tmp/...&port=5439
        ...
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

PG_ROOT = Path("/usr/lib/postgresql")
PORT = 5439          # names the socket file only: listen_addresses is empty


def _bin() -> Path:
    versions = sorted(PG_ROOT.iterdir(), key=lambda p: int(p.name)) if PG_ROOT.exists() else []
    if not versions:
        raise AssertionError("PostgreSQL is missing: apt-get install postgresql "
                             "(cloudmig/bootstrap-host --test-tools installs it)")
    return versions[-1] / "bin"


def _as_postgres(*argv: str | Path) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *map(str, argv)]


@contextlib.contextmanager
def postgres_server(database: str = "cloudmig"):
    bindir = _bin()
    work = Path(tempfile.mkdtemp(prefix="cloudmig-pg-"))
    pw = pwd.getpwnam("postgres")
    os.chown(work, pw.pw_uid, pw.pw_gid)
    data, sock = work / "data", work / "sock"
    proc = None
    try:
        subprocess.run(_as_postgres("mkdir", sock), check=True)
        subprocess.run(_as_postgres(bindir / "initdb", "-D", data, "-A", "trust", "-U", "postgres"),
                       check=True, capture_output=True)
        proc = subprocess.Popen(_as_postgres(bindir / "postgres", "-D", data, "-k", sock, "-p", str(PORT),
                                             "-c", "listen_addresses="),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            if subprocess.run([bindir / "pg_isready", "-h", sock, "-p", str(PORT)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        subprocess.run(_as_postgres(bindir / "createdb", "-h", sock, "-p", str(PORT), "-U", "postgres", database),
                       check=True, capture_output=True)
        yield f"postgresql://postgres@/{database}?host={sock}&port={PORT}"
    finally:
        if proc is not None:
            proc.terminate()          # runuser passes it on; postgres: smart shutdown
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)
