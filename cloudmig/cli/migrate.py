"""`cloudmig migrate NAME --to HOST`: live migration with live progress and a JSON report."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cloudmig.agent.api import Mode
from cloudmig.cli._app import app, console
from cloudmig.inventory import Inventory
from cloudmig.control.session import Session
from cloudmig import errors
from cloudmig.migration import events, journal, preflight, recovery
from cloudmig.migration.engine import Migration


class _Display:
    """Phases as they finish; a bar for the lazy transfer (pages and rate)."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.task = None

    def __call__(self, event: events.Event) -> None:
        match event:
            case events.PhaseStarted(name="lazy"):
                self._start_bar()
            case events.PhaseEnded(name=name, ms=ms):
                if name == "lazy":
                    self._stop_bar()
                console.print(f"  [green]done[/] {name:<10} {ms:8.1f} ms")
            case events.Resumed(freeze_ms=ms, round_trips=trips):
                console.print(f"  [bold]resumed on the destination: frozen for {ms:.1f} ms[/] "
                              f"({trips} controller calls inside)")
            case events.LazyMoved(progress=p, elapsed_s=elapsed) if self.progress is not None:
                rate = p.copied_pages * p.page_size / max(elapsed, 1e-3) / 2**20
                self.progress.update(self.task, total=max(p.lazy_pages, 1), completed=p.copied_pages,
                                     rate=f"{rate:.0f} MiB/s", faulted=p.faulted_pages)
            case events.Switched(forwards=forwards) if forwards:
                console.print(f"  forwarding from: {', '.join(forwards)}")
            case events.RollingBack(reason=reason):
                console.print(f"  [red]rolling back[/]: {escape(reason)}")
            case events.Warning(message=message):
                console.print(f"  [yellow]warning[/]: {escape(message)}")

    def _start_bar(self) -> None:
        self.progress = Progress(TextColumn("  lazy pages"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TextColumn("{task.fields[rate]}"), TextColumn("faulted {task.fields[faulted]}"),
                                 TimeElapsedColumn(), console=console, transient=True)
        self.task = self.progress.add_task("lazy", total=None, rate="-", faulted=0)
        self.progress.start()

    def _stop_bar(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


@app.command()
def migrate(name: str = typer.Argument(..., help="Container to move."),
            to: str = typer.Option(None, "--to", help="Destination host."),
            mode: str = typer.Option("postcopy", "--mode",
                                     help="postcopy (resume at once, memory follows) or stopcopy (baseline)."),
            resume: bool = typer.Option(False, "--resume",
                                        help="Finish (or roll back) this container's interrupted migration."),
            report: Path = typer.Option(None, "--report", help="Write the JSON report here.")) -> None:
    """Live-migrate a container to another host; its clients stay connected."""
    if resume:
        if to is not None:
            raise errors.ConfigError("--resume takes the destination from the interrupted migration; "
                                     "leave out --to.")
        _resume(name, report)
        return
    if to is None:
        raise errors.ConfigError("Missing option --to: the destination host.",
                                 hint=f"cloudmig migrate {name} --to HOST")
    display = _Display()
    with Session(Inventory()) as session:
        if mode not in preflight.MODES:      # refused, with the reason the source gives
            source = session.container(name).host
            preflight.check_mode(mode, session.agent(source).doctor()
                                 if mode in preflight.NEEDS_SOFT_DIRTY else [])
        mig = Migration(session, name, to, mode=Mode(mode), on_event=display)
        console.print(f"migrating {name}: {mig.src_name} -> {to} ({mode})")
        try:
            rep = mig.run()
        finally:
            display._stop_bar()
            if report is not None:
                mig.report.write(report)
    moved = rep.lazy_pages if mig.mode.lazy else rep.dumped_pages
    console.print(
        f"[bold green]migrated[/] {name} to {to}: freeze {rep.freeze_ms:.1f} ms, total {rep.total_ms:.0f} ms, "
        f"memory {rep.memory_bytes >> 20} MiB, pages {moved} "
        + (f"(faulted {rep.faulted_pages}, pushed {rep.pushed_pages}), " if mig.mode.lazy else ", ")
        + f"file system {rep.fs_bytes} bytes")


def _resume(name: str, report: Path | None) -> None:
    display = _Display()
    with Session(Inventory()) as session:
        try:
            outcome, rep = recovery.recover(session, name, on_event=display)
        finally:
            display._stop_bar()
    if report is not None:
        rep.write(report)
    host = rep.destination if rep.ok else rep.source
    console.print(f"[bold green]{outcome}[/]: {name} runs on {host}")


@app.command()
def recover(report_dir: Path = typer.Option(None, "--report-dir",
                                            help="Write each recovered migration's JSON report here.")) -> None:
    """Finish or roll back every interrupted migration (a controller died in the middle)."""
    unfinished = journal.Journal.unfinished()
    todo = [v for v in unfinished if v.status == "interrupted"]
    busy = [v for v in unfinished if v.status == "in flight"]
    for v in busy:
        console.print(f"{v.record.container}: {journal.describe(v)} (left alone)")
    if not todo:
        console.print("no interrupted migration")
        return
    failed = []
    for v in todo:
        console.print(f"{v.record.container}: {journal.describe(v)}")
        try:
            _resume(v.record.container, report_dir / f"{v.record.container}.json" if report_dir else None)
        except errors.CloudmigError as exc:
            console.print(f"  [red]error[/]: {escape(str(exc))}")
            failed.append(v.record.container)
    if failed:
        raise errors.MigrationError(f"Could not recover: {', '.join(failed)}.",
                                    hint="See the errors above; run `cloudmig migrate --resume NAME` again.")
