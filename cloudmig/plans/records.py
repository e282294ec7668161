"""The plans' own records, in the same database as DBOS's checkpoints (SQLite under the state
directory by default; ``$CLOUDMIG_PLANS_DB``, a PostgreSQL URL, for many controllers).

- ``cloudmig_plans``: one row per plan: its file, its resolved steps, state, attempt, abort flag,
  the controller process applying it;
- ``cloudmig_plan_steps``: one row per container: where from, where to, its state now;
- ``cloudmig_plan_runs``: one row per call of the migration engine (a move, or a move back),
  written when it starts and when it ends, on which hosts, with its report's numbers. A
  container moved twice would have two rows; tests check the limits from these rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from functools import lru_cache
from typing import Any

import sqlalchemy as sa

from cloudmig import errors, paths

meta = sa.MetaData()
plans = sa.Table(
    "cloudmig_plans", meta,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),    # running | done | failed | aborted
    sa.Column("attempt", sa.Integer, nullable=False, default=1),
    sa.Column("abort", sa.Boolean, nullable=False, default=False),
    sa.Column("file", sa.Text, nullable=False),
    sa.Column("resolved", sa.Text, nullable=False),
    sa.Column("owner_pid", sa.Integer),
    sa.Column("owner_host", sa.String(255)),
    sa.Column("owner_executor", sa.String(255)),          # its DBOS executor id
    sa.Column("started_at", sa.Float),
    sa.Column("ended_at", sa.Float),
    sa.Column("outcome", sa.Text),
)
steps = sa.Table(
    "cloudmig_plan_steps", meta,
    sa.Column("plan", sa.String(64), primary_key=True),
    sa.Column("container", sa.String(64), primary_key=True),
    sa.Column("wave", sa.Integer, nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("destination", sa.String(64), nullable=False),
    # pending | queued | recovering | moving | checking | done | already | failed | skipped | aborted | back
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("phase", sa.String(16)),
    sa.Column("detail", sa.Text),
)
runs = sa.Table(
    "cloudmig_plan_runs", meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("plan", sa.String(64), nullable=False),
    sa.Column("container", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),         # move | back
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("destination", sa.String(64), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float),
    sa.Column("ok", sa.Boolean),
    sa.Column("error", sa.Text),
    sa.Column("freeze_ms", sa.Float),
    sa.Column("total_ms", sa.Float),
    sa.Column("held_ms", sa.Float),        # the engine report's: hold's start to the switch's release
    sa.Column("memory_bytes", sa.BigInteger),
    sa.Column("pid", sa.Integer),
)


def db_url() -> str:
    url = os.environ.get("CLOUDMIG_PLANS_DB")
    if url:
        return url
    d = paths.ensure_private_dir(paths.state_dir() / "plans")
    return f"sqlite:///{d / 'plans.sqlite'}"


def sqlalchemy_url(url: str) -> str:
    """The URL as SQLAlchemy wants it: PostgreSQL through psycopg 3 (what DBOS uses too)."""
    return re.sub(r"^postgres(ql)?://", "postgresql+psycopg://", url)


@lru_cache(maxsize=4)
def _engine_for(url: str) -> sa.Engine:
    url = sqlalchemy_url(url)
    args = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {}
    engine = sa.create_engine(url, **args)
    for attempt in range(3):
        try:
            meta.create_all(engine)
            _add_new_columns(engine)
            break
        except sa.exc.DatabaseError:    # another process created them between check and create
            if attempt == 2:
                raise
            time.sleep(0.2)
    return engine


def _add_new_columns(engine: sa.Engine) -> None:
    """Columns added since the database was made (create_all only makes missing tables);
    every column added later is nullable."""
    inspector = sa.inspect(engine)
    with engine.begin() as c:
        for table in meta.sorted_tables:
            have = {col["name"] for col in inspector.get_columns(table.name)}
            for col in table.columns:
                if col.name not in have:
                    c.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {col.name} "
                                      f"{col.type.compile(engine.dialect)}"))


def engine() -> sa.Engine:
    return _engine_for(db_url())


# ---------------------------------------------------------------------- plans
def get(name: str) -> dict | None:
    with engine().connect() as c:
        row = c.execute(sa.select(plans).where(plans.c.name == name)).mappings().first()
    return dict(row) if row else None


def all_plans() -> list[dict]:
    with engine().connect() as c:
        return [dict(r) for r in c.execute(sa.select(plans).order_by(plans.c.started_at)).mappings()]


def create(name: str, file_text: str, resolved: dict, step_rows: list[dict]) -> None:
    with engine().begin() as c:
        # a plan applied again under a finished one's name: its attempts go on counting, so
        # its workflow ids (plan:NAME:ATTEMPT) are new
        last = c.execute(sa.select(plans.c.attempt).where(plans.c.name == name)).scalar()
        c.execute(sa.delete(steps).where(steps.c.plan == name))
        c.execute(sa.delete(plans).where(plans.c.name == name))
        c.execute(sa.insert(plans).values(name=name, state="running", attempt=(last or 0) + 1, abort=False,
                                          file=file_text,
                                          resolved=json.dumps(resolved), started_at=time.time(),
                                          owner_pid=os.getpid(), owner_host=socket.gethostname()))
        if step_rows:
            c.execute(sa.insert(steps), [dict(plan=name, state="pending", **r) for r in step_rows])


def update(name: str, **values: Any) -> None:
    with engine().begin() as c:
        c.execute(sa.update(plans).where(plans.c.name == name).values(**values))


def claim(name: str, executor: str) -> None:
    """This process applies the plan now, as DBOS executor ``executor``."""
    if not lock(name):
        row = require(name)
        raise errors.PlanError(f"Plan {name} is being applied by another controller "
                               f"(pid {row['owner_pid']} on {row['owner_host']}).",
                               hint=f"`cloudmig plan abort {name}` stops it.")
    update(name, owner_pid=os.getpid(), owner_host=socket.gethostname(), owner_executor=executor)


# On PostgreSQL the controller applying a plan holds a session advisory lock on a connection
# of its own for as long as it lives: the server lets it go when that connection ends (the
# process died; its machine went away: the keepalives below notice within ~25 s), so any
# controller, on any machine, can tell a plan's controller is gone.
_locks: dict[str, sa.Connection] = {}
KEEPALIVES = ("tcp_keepalives_idle = 10", "tcp_keepalives_interval = 5", "tcp_keepalives_count = 3")


def _shared() -> bool:
    return engine().dialect.name == "postgresql"


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"cloudmig-plan:{name}".encode()).digest()[:8], "big", signed=True)


def lock(name: str) -> bool:
    """Plan ``name``'s lock for this process, until it ends (PostgreSQL; nothing to take on
    SQLite, where one machine applies plans); False if another controller holds it."""
    if not _shared() or name in _locks:
        return True
    conn = engine().connect()
    try:
        for setting in KEEPALIVES:
            conn.execute(sa.text(f"SET {setting}"))
        got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": _lock_key(name)}).scalar()
        conn.commit()
    except BaseException:
        conn.close()
        raise
    if not got:
        conn.close()
        return False
    _locks[name] = conn
    return True


def _locked(name: str) -> bool:
    """Some controller (this process too) holds plan ``name``'s lock."""
    with engine().begin() as c:
        return not c.execute(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _lock_key(name)}).scalar()


def interrupted(row: dict) -> bool:
    """Running, but its controller is gone: on PostgreSQL, nobody holds the plan's lock (the
    controller may have run on any machine); on SQLite, its process ended."""
    if row["state"] != "running":
        return False
    if _shared():
        return not _locked(row["name"])
    if row["owner_host"] != socket.gethostname() or not row["owner_pid"]:
        return False
    try:
        os.kill(row["owner_pid"], 0)
    except ProcessLookupError:
        return True
    return _is_zombie(row["owner_pid"])


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def abort_requested(name: str) -> bool:
    row = get(name)
    return bool(row and row["abort"])


def require(name: str) -> dict:
    row = get(name)
    if row is None:
        known = ", ".join(p["name"] for p in all_plans()) or "none"
        raise errors.PlanError(f"Unknown plan {name!r} (plans: {known}).", hint="`cloudmig plan status` lists them.")
    return row


# ---------------------------------------------------------------------- steps and runs
def set_step(plan: str, container: str, **values: Any) -> None:
    with engine().begin() as c:
        c.execute(sa.update(steps).where(steps.c.plan == plan, steps.c.container == container).values(**values))


def plan_steps(plan: str) -> list[dict]:
    with engine().connect() as c:
        return [dict(r) for r in c.execute(sa.select(steps).where(steps.c.plan == plan)
                                           .order_by(steps.c.wave, steps.c.container)).mappings()]


def run_started(plan: str, container: str, kind: str, source: str, destination: str) -> int:
    with engine().begin() as c:
        res = c.execute(sa.insert(runs).values(plan=plan, container=container, kind=kind, source=source,
                                               destination=destination, started_at=time.time(), pid=os.getpid()))
        return int(res.inserted_primary_key[0])


def run_ended(run_id: int, ok: bool, error: str | None, report: dict) -> None:
    with engine().begin() as c:
        c.execute(sa.update(runs).where(runs.c.id == run_id).values(
            ended_at=time.time(), ok=ok, error=error, freeze_ms=report.get("freeze_ms"),
            total_ms=report.get("total_ms"), held_ms=report.get("held_ms"),
            memory_bytes=report.get("memory_bytes")))


def dangling_run(plan: str, container: str) -> int | None:
    """The run of ``container`` that started and never ended (its controller died), if any."""
    with engine().connect() as c:
        row = c.execute(sa.select(runs.c.id).where(runs.c.plan == plan, runs.c.container == container,
                                                   runs.c.ended_at.is_(None)).order_by(runs.c.id.desc())).first()
    return int(row[0]) if row else None


def plan_runs(plan: str) -> list[dict]:
    with engine().connect() as c:
        return [dict(r) for r in c.execute(sa.select(runs).where(runs.c.plan == plan).order_by(runs.c.id)).mappings()]


def most_at_once(rows: list[dict], key: str | None = None) -> int:
    """The most runs that overlapped in time (per ``key``'s value, e.g. "source", if given);
    an unfinished run counts until now."""
    groups: dict[Any, list[tuple[float, int]]] = {}
    for r in rows:
        g = groups.setdefault(r[key] if key else None, [])
        g += [(r["started_at"], 1), (r["ended_at"] or time.time(), -1)]
    best = 0
    for events in groups.values():
        n = 0
        for _, delta in sorted(events, key=lambda e: (e[0], e[1])):   # an end before a start at one instant
            n += delta
            best = max(best, n)
    return best
