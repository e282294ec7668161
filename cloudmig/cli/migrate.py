"""`cloudmig migrate NAME --to HOST`: live migration with live progress and a JSON report."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cloudmig import errors
from cloudmig.cli._app import app, console
from cloudmig.inventory import Inventory
from cloudmig.migration import preflight
from cloudmig.migration.engine import Migration

PAGE = 4096


class _Display:
    """Phases as they finish; a bar for the lazy transfer (pages and rate)."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.progress: Progress | None = None
        self.task = None
        self.t_lazy = 0.0

    def __call__(self, kind: str, **data) -> None:
        if kind == "phase":
            name, state = data["name"], data["state"]
            if state == "start":
                self.started[name] = time.monotonic()
                if name == "lazy":
                    self._start_bar()
            else:
                if name == "lazy":
                    self._stop_bar()
                ms = (time.monotonic() - self.started.get(name, time.monotonic())) * 1000
                console.print(f"  [green]done[/] {name:<10} {ms:8.1f} ms")
        elif kind == "resumed":
            console.print(f"  [bold]resumed on the destination: frozen for {data['freeze_ms']:.1f} ms[/]")
        elif kind == "lazy" and self.progress is not None:
            total = max(int(data.get("lazy_pages", 0)), 1)
            copied = int(data.get("copied_pages", 0))
            elapsed = max(time.monotonic() - self.t_lazy, 1e-3)
            self.progress.update(self.task, total=total, completed=copied,
                                 rate=f"{copied * PAGE / elapsed / 2**20:.0f} MiB/s",
                                 faulted=int(data.get("faulted_pages", 0)))
        elif kind == "switched" and data.get("forwards"):
            console.print(f"  forwarding from: {', '.join(data['forwards'])}")
        elif kind == "rollback":
            console.print(f"  [red]rolling back[/]: {data['reason']}")
        elif kind == "warning":
            console.print(f"  [yellow]warning[/]: {data['message']}")

    def _start_bar(self) -> None:
        self.t_lazy = time.monotonic()
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
            to: str = typer.Option(..., "--to", help="Destination host."),
            mode: str = typer.Option("postcopy", "--mode",
                                     help="postcopy (resume at once, memory follows) or stopcopy (baseline)."),
            report: Path = typer.Option(None, "--report", help="Write the JSON report here.")) -> None:
    """Live-migrate a container to another host; its clients stay connected."""
    if mode not in preflight.MODES + preflight.NEEDS_SOFT_DIRTY:
        raise errors.ConfigError(f"--mode {mode!r} is not one of postcopy, stopcopy.")
    display = _Display()
    mig = Migration(Inventory(), name, to, mode=mode, on_event=display)
    console.print(f"migrating {name}: {mig.src_name} -> {to} ({mode})")
    try:
        rep = mig.run()
    finally:
        display._stop_bar()
        if report is not None:
            mig.report.write(report)
    moved = rep.lazy_pages if mode == "postcopy" else rep.dumped_pages
    console.print(
        f"[bold green]migrated[/] {name} to {to}: freeze {rep.freeze_ms:.1f} ms, total {rep.total_ms:.0f} ms, "
        f"memory {rep.memory_bytes >> 20} MiB, pages {moved} "
        + (f"(faulted {rep.faulted_pages}, pushed {rep.pushed_pages}), " if mode == "postcopy" else ", ")
        + f"file system {rep.fs_bytes} bytes")
