"""The controller's journal of one migration: how far it got and what it learnt on the way.

    journal = Journal.begin("db", source="h1", destination="h2", mode="postcopy")
    journal.update(state="frozen", phase="restore", learnt={"ps_port": 41234})
    journal.end("done")
    Journal.load("db").status        # "in flight" | "interrupted" | "done" | "rolled_back" | "failed"

One file per container, ``state_dir()/migrations/NAME.json``. The controller that runs the
migration holds an exclusive ``flock`` on ``NAME.lock`` for as long as it runs: a journal
whose lock can be taken and whose state is not final belongs to a controller that died, and
``cloudmig migrate --resume NAME`` (or ``cloudmig recover``) finishes or rolls it back.

Writes are a write to a temporary file and a rename, without fsync: the failure this journal
is for is a controller process that dies (its writes are in the page cache and survive it);
an fsync inside the freeze would cost the container milliseconds on every phase. Each agent
keeps its own side's journal (cloudmig.agent.side), so a controller that lost its machine
still learns from the hosts how far the migration went.
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from pathlib import Path

from pydantic import BaseModel, Field

from cloudmig import errors, paths

FINAL_STATES = ("done", "rolled_back", "failed", "lost")     # failed: before anything changed


class JournalRecord(BaseModel):
    id: str
    container: str
    source: str
    destination: str
    mode: str
    state: str = "new"                 # cloudmig.migration.engine.State values
    phase: str = ""                    # the phase running (or the last one that ran)
    started_at: float = 0.0
    updated_at: float = 0.0
    controller_pid: int = 0
    error: str | None = None
    learnt: dict = Field(default_factory=dict)   # tunnel ends, page server port, ...
    resumed_by: list[int] = Field(default_factory=list)   # pids of controllers that recovered it


def journal_dir() -> Path:
    return paths.state_dir() / "migrations"


class Journal:
    def __init__(self, record: JournalRecord, lock_fd: int | None = None) -> None:
        self.record = record
        self._lock_fd = lock_fd

    # ------------------------------------------------------------------ paths
    @staticmethod
    def path_of(name: str) -> Path:
        return journal_dir() / f"{name}.json"

    @staticmethod
    def lock_path_of(name: str) -> Path:
        return journal_dir() / f"{name}.lock"

    # ------------------------------------------------------------------ opening
    @classmethod
    def begin(cls, name: str, source: str, destination: str, mode: str) -> "Journal":
        """A new migration of ``name``; refused while an earlier one is unfinished."""
        fd = cls._lock(name)
        old = cls._read(name)
        if old is not None and old.state not in FINAL_STATES:
            os.close(fd)
            raise errors.MigrationError(
                f"An earlier migration of {name} ({old.source} -> {old.destination}) was interrupted "
                f"at {old.phase or old.state} (state {old.state}).",
                hint=f"Finish or roll it back first: cloudmig migrate --resume {name}")
        now = time.time()
        rec = JournalRecord(id=uuid.uuid4().hex[:12], container=name, source=source,
                            destination=destination, mode=mode, started_at=now, updated_at=now,
                            controller_pid=os.getpid())
        journal = cls(rec, fd)
        journal._write()
        return journal

    @classmethod
    def take_over(cls, name: str) -> "Journal":
        """The interrupted migration of ``name``, locked by this controller to recover it."""
        rec = cls._read(name)
        if rec is None:
            raise errors.ConfigError(f"No migration of {name!r} is on record.",
                                     hint="Run `cloudmig ps` to see migrations in flight or interrupted.")
        if rec.state in FINAL_STATES:
            raise errors.ConfigError(
                f"The last migration of {name} ({rec.source} -> {rec.destination}) is finished "
                f"({rec.state}); there is nothing to resume.")
        fd = cls._lock(name)
        rec = cls._read(name) or rec          # as it was once the lock was ours
        rec.resumed_by.append(os.getpid())
        journal = cls(rec, fd)
        journal._write()
        return journal

    @classmethod
    def _lock(cls, name: str) -> int:
        paths.ensure_private_dir(journal_dir())
        fd = os.open(cls.lock_path_of(name), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            rec = cls._read(name)
            who = f" (controller pid {rec.controller_pid})" if rec else ""
            raise errors.MigrationError(f"A migration of {name} is in flight{who}.",
                                        hint="Wait for it to end; `cloudmig ps` shows it.") from None
        return fd

    # ------------------------------------------------------------------ reading
    @classmethod
    def _read(cls, name: str) -> JournalRecord | None:
        try:
            return JournalRecord.model_validate_json(cls.path_of(name).read_text())
        except FileNotFoundError:
            return None

    @classmethod
    def load(cls, name: str) -> "JournalView":
        rec = cls._read(name)
        if rec is None:
            raise errors.ConfigError(f"No migration of {name!r} is on record.")
        return JournalView(rec, _status(name, rec))

    @classmethod
    def unfinished(cls) -> list["JournalView"]:
        """Migrations in flight or interrupted, oldest first."""
        views = []
        for path in sorted(journal_dir().glob("*.json")) if journal_dir().exists() else []:
            try:
                rec = JournalRecord.model_validate_json(path.read_text())
            except (OSError, ValueError):
                continue
            if rec.state not in FINAL_STATES:
                views.append(JournalView(rec, _status(rec.container, rec)))
        return sorted(views, key=lambda v: v.record.started_at)

    # ------------------------------------------------------------------ writing
    def update(self, **fields) -> None:
        learnt = fields.pop("learnt", None)
        for key, value in fields.items():
            setattr(self.record, key, value)
        if learnt:
            self.record.learnt.update(learnt)
        self.record.updated_at = time.time()
        self._write()

    def end(self, state: str, error: str | None = None) -> None:
        self.update(state=state, error=error)
        self.release()

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _write(self) -> None:
        path = self.path_of(self.record.container)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.record.model_dump_json(indent=2))
        os.replace(tmp, path)


class JournalView:
    """A journal as read by someone who does not run it: its record and its status."""

    def __init__(self, record: JournalRecord, status: str) -> None:
        self.record, self.status = record, status

    def as_dict(self) -> dict:
        return {**self.record.model_dump(), "status": self.status}


def _status(name: str, rec: JournalRecord) -> str:
    if rec.state in FINAL_STATES:
        return rec.state
    lock = Journal.lock_path_of(name)
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return "interrupted"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return "in flight"
    finally:
        os.close(fd)        # closing drops a lock we may have taken
    return "interrupted"


def describe(view: JournalView) -> str:
    r = view.record
    return (f"{view.status}: {r.source} -> {r.destination} ({r.mode}), at {r.phase or '-'}, "
            f"state {r.state}")

