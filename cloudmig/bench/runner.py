"""One benchmark run and the sweep over sizes, write rates, modes, WAN rates and repetitions.

    cfg = runner.Config(sizes_mib=[64, 256], modes=["postcopy", "stopcopy", "cold"])
    results = runner.sweep(cfg, progress=print)      # list[RunResult]

Every run: start the workload on h1 (published on h1's public address), connect a client
through that address, let it answer for ``BASELINE_S``, move the container to h2 (post-copy
and stop-and-copy through cloudmig.migration.engine.Migration in this process, with an
``on_event`` that timestamps phases and lazy-page progress; cold restart through
cloudmig.bench.cold), keep the client going for ``AFTER_S``, then verify the memory and
remove the container. All modes of one size run back to back on the same lab hosts.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from cloudmig.bench import client as bench_client
from cloudmig.bench import cold, lab, workload
from cloudmig.control import containers
from cloudmig.inventory import Inventory
from cloudmig.migration.engine import Migration

log = logging.getLogger(__name__)

MODES = ("postcopy", "stopcopy", "cold")
CONTAINER_PORT = 7000
BASELINE_S = 1.0            # client answers before the move (the "before" request rate)
AFTER_S = 1.0               # and after it
READY_TIMEOUT_S = 120       # filling 2 GiB in Python takes a while on a busy machine
PAGE = 4096


@dataclasses.dataclass
class Config:
    sizes_mib: list[int] = dataclasses.field(default_factory=lambda: [64, 256, 1024])
    dirty_mibps: list[float] = dataclasses.field(default_factory=lambda: [0.0])
    modes: list[str] = dataclasses.field(default_factory=lambda: list(MODES))
    wan_rates: list[str | None] = dataclasses.field(default_factory=lambda: [None])
    repetitions: int = 1
    out_dir: Path = Path("bench-results")
    lab_id: str = "bn"
    state_dir: Path = Path("/tmp/cloudmig-bench")
    host_port: int = 17000
    keep_criu_logs: bool = True


@dataclasses.dataclass
class RunResult:
    mode: str
    memory_mib: int
    dirty_mibps: float
    wan_rate: str | None
    rep: int
    ok: bool = False
    error: str | None = None
    state: str = "unknown"                # survived | lost | corrupt | unknown
    verify_bad_pages: int | None = None
    freeze_ms: float | None = None
    total_ms: float | None = None
    client_longest_wait_ms: float | None = None
    rate_before_rps: float | None = None  # client's answered requests/s before the freeze
    rate_lazy_rps: float | None = None    # ... while memory was still arriving (post-copy)
    answers: int = 0
    bytes_moved: int = 0                  # images + writable layer + lazily moved pages
    report: dict = dataclasses.field(default_factory=dict)
    timeline: list[dict] = dataclasses.field(default_factory=list)


class _Recorder:
    """on_event for the engine: every event with its wall-clock time; CRIU logs copied out
    of the hosts' migration directories before cloudmig removes them."""

    def __init__(self, name: str, src: str, dst: str, log_dir: Path | None) -> None:
        self.name, self.src, self.dst, self.log_dir = name, src, dst, log_dir
        self.events: list[dict] = []

    def __call__(self, kind: str, **data: Any) -> None:
        keep = {k: v for k, v in data.items() if isinstance(v, (int, float, str, bool))}
        self.events.append({"t": time.time(), "kind": kind, **keep})
        if kind == "phase" and data.get("state") == "end" and data.get("name") == "restore":
            self._copy_logs(self.dst, "work-dst")
            self._list_images(self.dst)
        if kind == "phase" and data.get("state") == "start" and data.get("name") == "cleanup":
            self._copy_logs(self.src, "work-src")

    def _copy_logs(self, host: str, work: str) -> None:
        if self.log_dir is None:
            return
        src = lab.host_dir(host) / "migrations" / self.name / work
        for path in src.glob("*.log"):
            self.log_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, self.log_dir / f"{work}-{path.name}")

    def _list_images(self, host: str) -> None:
        """What CRIU's images were made of (the part of the freeze that crosses the network)."""
        if self.log_dir is None:
            return
        images = lab.host_dir(host) / "migrations" / self.name / "images"
        sizes = sorted(((p.stat().st_size, p.name) for p in images.iterdir() if p.is_file()),
                       reverse=True) if images.is_dir() else []
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.log_dir / "images.txt").write_text("".join(f"{n:>10} {name}\n" for n, name in sizes))


def _phase(report: dict, name: str) -> dict | None:
    return next((p for p in report.get("phases", []) if p["name"] == name), None)


def run_one(cfg: Config, addresses: dict[str, str], *, mode: str, memory_mib: int,
            dirty_mibps: float, wan_rate: str | None, rep: int, index: int) -> RunResult:
    res = RunResult(mode=mode, memory_mib=memory_mib, dirty_mibps=dirty_mibps, wan_rate=wan_rate, rep=rep)
    name = f"bench{index}"
    publish = [f"{cfg.host_port}:{CONTAINER_PORT}"]
    inv = Inventory()
    cmd = workload.command(port=CONTAINER_PORT, memory_mib=memory_mib, dirty_mibps=dirty_mibps)
    containers.run(host="h1", name=name, image="host", command=cmd, publish=publish, env=[], inv=inv)
    held = None
    try:
        conn = bench_client.connect(addresses["h1"], cfg.host_port, READY_TIMEOUT_S)
        conn.close()
        held = bench_client.HeldClient(addresses["h1"], cfg.host_port,
                                       fallback=addresses["h2"] if mode == "cold" else None).start()
        time.sleep(BASELINE_S)
        log_dir = cfg.out_dir / "criu-logs" / name if cfg.keep_criu_logs else None
        rec = _Recorder(name, "h1", "h2", log_dir)
        try:
            if mode == "cold":
                report = cold.restart(inv, name, "h2", publish=publish, on_event=rec)
            else:
                report = Migration(inv, name, "h2", mode=mode, on_event=rec).run()
        finally:
            res.timeline = rec.events
        res.report = report.to_dict()
        time.sleep(AFTER_S)
        held.stop()
        if mode != "cold":
            res.verify_bad_pages = held.verify()
        res.ok = bool(report.ok)
    except Exception as exc:  # one failed run is a row of the table, not the end of the sweep
        log.exception("run %s failed", name)
        res.error = f"{type(exc).__name__}: {exc}"
    finally:
        if held is not None:
            held.stop()
            held.close()
            _client_numbers(res, held)
        try:
            containers.remove(name, inv=inv)
        except Exception as exc:
            log.warning("removing %s: %s", name, exc)
    return res


def _client_numbers(res: RunResult, held: bench_client.HeldClient) -> None:
    rep = res.report
    res.state = held.state(res.verify_bad_pages) if res.ok else "unknown"
    res.answers = len(held.samples)
    res.client_longest_wait_ms = held.longest_wait_s * 1000
    res.freeze_ms, res.total_ms = rep.get("freeze_ms"), rep.get("total_ms")
    first = rep.get("phases", [{}])[0] if rep.get("phases") else None
    freeze = _phase(rep, "freeze") or _phase(rep, "stop") or first
    if freeze and held.samples:
        res.rate_before_rps = held.rate_between(held.samples[0].sent, freeze["start"])
    lazy = _phase(rep, "lazy")
    if lazy and lazy.get("end"):
        res.rate_lazy_rps = held.rate_between(lazy["start"], lazy["end"])
    res.bytes_moved = (rep.get("images_bytes", 0) + rep.get("fs_bytes", 0)
                       + rep.get("lazy_pages", 0) * PAGE)


def sweep(cfg: Config, progress: Callable[[str], None] = lambda line: None) -> list[RunResult]:
    results: list[RunResult] = []
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    index = 0
    for wan_rate in cfg.wan_rates:
        # the lab shapes its links at creation: one lab per WAN rate
        progress(f"lab {cfg.lab_id} up (WAN {wan_rate or 'unshaped'})")
        with lab.own_lab(cfg.state_dir, cfg.lab_id, hosts=2, wan_rate=wan_rate,
                         progress=lambda line: progress("  " + line)) as addresses:
            for memory_mib in cfg.sizes_mib:
                for dirty in cfg.dirty_mibps:
                    for rep in range(cfg.repetitions):
                        for mode in cfg.modes:
                            index += 1
                            r = run_one(cfg, addresses, mode=mode, memory_mib=memory_mib,
                                        dirty_mibps=dirty, wan_rate=wan_rate, rep=rep, index=index)
                            results.append(r)
                            progress(_summary(r))
        progress(f"lab {cfg.lab_id} removed")
    return results


def _summary(r: RunResult) -> str:
    if not r.ok:
        return f"{r.mode:<8} {r.memory_mib:>5} MiB: FAILED {r.error}"
    return (f"{r.mode:<8} {r.memory_mib:>5} MiB dirty {r.dirty_mibps:g} MiB/s WAN {r.wan_rate or '-'}: "
            f"freeze {r.freeze_ms:.0f} ms, longest wait {r.client_longest_wait_ms:.0f} ms, "
            f"total {r.total_ms:.0f} ms, state {r.state}")
