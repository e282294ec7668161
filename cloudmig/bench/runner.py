"""One benchmark run and the sweep over sizes, write rates, modes, WAN rates and repetitions.

    cfg = runner.Config(sizes_mib=[64, 256], modes=["postcopy", "stopcopy", "cold"])
    results = runner.sweep(cfg, progress=print)      # list[RunResult]

Every run: start the workload on h1 (published on h1's public address), connect a client
through that address, let it answer for a window (``Config.window_s``; post-copy: then for one more
while the tunnel carries a bulk transfer, the lab's own cost of moving bytes), move the container to h2 (post-copy
and stop-and-copy through cloudmig.migration.engine.Migration in this process, with an
``on_event`` that timestamps phases and lazy-page progress; cold restart through
cloudmig.bench.cold), keep the client going for a window more, then verify the memory and
remove the container. All modes of one size run back to back on the same lab hosts.

The sweep runs in a child process (``python -m cloudmig.bench.runner``) started with the
bench lab's environment (``lab.process_env``), so that cloudmig's modules act on that lab
while this process's environment stays as it is. The child sends its progress lines and
results back as JSON lines on a pipe; Ctrl-C or SIGTERM here interrupts it like Ctrl-C (it
removes its lab), and it gets SIGINT too if this process dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from cloudmig import errors, signals
from cloudmig import log as cloudmig_log
from cloudmig.bench import client as bench_client
from cloudmig.bench import cold, lab, workload
from cloudmig.control import containers, tunnels
from cloudmig.agent.api import Mode
from cloudmig.inventory import Inventory
from cloudmig.control.session import Session
from cloudmig.migration import events
from cloudmig.migration.engine import PHASES, Migration
from cloudmig.migration.faults import Faults
from cloudmig.providers import lab as lab_hosts

log = logging.getLogger(__name__)

MODES = ("postcopy", "stopcopy", "cold")
CONTAINER_PORT = 7000
# each of the client's measuring windows (--window): answers before the move (the "before"
# request rate), post-copy's while the tunnel carries a bulk transfer that long, and after it
WINDOW_S = 1.0
LATER_LOG_S = 5.0           # the lazy-pages log copied again this long after the switch
READY_TIMEOUT_S = 120       # filling 2 GiB in Python takes a while on a busy machine
TRANSPORT_HOSTS = {"lab": ("h1", "h2"), "ssh": ("s1", "s2")}     # source, destination
PR_SET_PDEATHSIG = 1        # prctl(2): the signal this process gets when its parent dies


@dataclasses.dataclass
class Config:
    sizes_mib: list[int] = dataclasses.field(default_factory=lambda: [64, 256, 1024])
    dirty_mibps: list[float] = dataclasses.field(default_factory=lambda: [0.0])
    modes: list[str] = dataclasses.field(default_factory=lambda: list(MODES))
    wan_rates: list[str | None] = dataclasses.field(default_factory=lambda: [None])
    transports: list[str] = dataclasses.field(default_factory=lambda: ["lab"])
    # seconds the WAN between the hosts is cut as the lazy transfer begins (post-copy runs;
    # 0: none, the baseline the outage runs are compared with)
    outages_s: list[float] = dataclasses.field(default_factory=lambda: [0.0])
    repetitions: int = 1
    tunnel_mibps: dict[str, float] = dataclasses.field(default_factory=dict)   # per WAN rate, measured
    out_dir: Path = Path("bench-results")
    lab_id: str = "bn"
    state_dir: Path = Path("/tmp/cloudmig-bench")
    host_port: int = 17000
    keep_criu_logs: bool = True
    window_s: float = WINDOW_S        # each of the client's measuring windows (before, bulk, after)


@dataclasses.dataclass
class RunResult:
    mode: str
    memory_mib: int
    dirty_mibps: float
    wan_rate: str | None             # the WAN: a rate, a round trip or both (bench.lab.parse_wan)
    rep: int
    transport: str = "lab"           # how the controller reached the hosts: lab (unix) or ssh
    outage_s: float = 0.0            # the WAN cut this long as the lazy transfer began
    recovery_s: float | None = None  # from the link's return to the next page that arrived
    lazy_ms: float | None = None     # the lazy phase, outage included
    tunnel_mibps: float | None = None    # the tunnel's own throughput, measured in the same lab
    transfer_of_tunnel: float | None = None   # memory's transfer rate / tunnel_mibps
    ok: bool = False
    error: str | None = None
    state: str = "unknown"                # survived | lost | corrupt | unknown
    verify_bad_pages: int | None = None
    freeze_ms: float | None = None
    total_ms: float | None = None
    client_longest_wait_ms: float | None = None
    client_longest_sent: float | None = None   # wall clock: when that request was sent
    client_retransmits: int | None = None # segments the client's kernel sent again (TCP_INFO)
    rate_before_rps: float | None = None  # client's answered requests/s before the freeze
    rate_lazy_rps: float | None = None    # ... while memory was still arriving (post-copy)
    rate_bulk_rps: float | None = None    # ... while the tunnel carried a bulk transfer (before the move)
    rate_after_rps: float | None = None   # ... once the migration had ended (a window: the new path, no pages)
    bulk_window: tuple[float, float] | None = None   # wall clock: when that transfer ran
    answers: int = 0
    bytes_moved: int = 0                  # images + writable layer + pages sent ahead + lazily moved pages
    report: dict = dataclasses.field(default_factory=dict)
    timeline: list[dict] = dataclasses.field(default_factory=list)

    @property
    def wait_over_freeze_ms(self) -> float | None:
        """How much longer than the freeze the client waited (the switch, the first answer)."""
        if self.client_longest_wait_ms is None or self.freeze_ms is None:
            return None
        return self.client_longest_wait_ms - self.freeze_ms


class _Recorder:
    """on_event for the engine: every event with its wall-clock time; CRIU logs copied out
    of the hosts' migration directories before cloudmig removes them."""

    def __init__(self, name: str, src: str, dst: str, log_dir: Path | None) -> None:
        self.name, self.src, self.dst, self.log_dir = name, src, dst, log_dir
        self.events: list[dict] = []
        self._switched: float | None = None

    def __call__(self, event: events.Event) -> None:
        match event:
            case events.PhaseStarted(name=name):
                row = {"kind": "phase", "name": name, "state": "start"}
            case events.PhaseEnded(name=name, ms=ms):
                row = {"kind": "phase", "name": name, "state": "end", "ms": ms}
            case events.LazyMoved(progress=progress):
                row = {"kind": "lazy", **dataclasses.asdict(progress)}
            case events.Resumed(freeze_ms=ms):
                row = {"kind": "resumed", "freeze_ms": ms}
            case _:
                row = {"kind": type(event).__name__.lower()}
        self.events.append({"t": time.time(), **row})
        phase = (row.get("name"), row.get("state")) if row["kind"] == "phase" else None
        if phase == ("switch", "end"):       # not earlier: the copy would delay the switch
            self._copy_logs(self.dst, "work-dst")
            self._list_images(self.dst)
        if phase == ("cleanup", "start"):
            self._copy_logs(self.src, "work-src")
        if phase == ("switch", "end"):
            self._switched = time.monotonic()
        elif row["kind"] == "lazy" and self._switched and time.monotonic() - self._switched > LATER_LOG_S:
            self._switched = None        # the first answers' faults, over a WAN seconds long
            self._copy_logs(self.dst, "work-dst", "lazy-pages.log", prefix="later-")

    def _copy_logs(self, host: str, work: str, pattern: str = "*.log", prefix: str = "") -> None:
        """PREFIXwork-NAME for each log; one may go with its directory meanwhile (the lazy-pages
        daemon removes its own with its last page)."""
        if self.log_dir is None:
            return
        src = lab_hosts.agent_dir(host) / "migrations" / self.name / work
        for path in src.glob(pattern):
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                shutil.copy2(path, self.log_dir / f"{prefix}{work}-{path.name}")

    def _list_images(self, host: str) -> None:
        """What CRIU's images were made of (the part of the freeze that crosses the network)."""
        if self.log_dir is None:
            return
        images = lab_hosts.agent_dir(host) / "migrations" / self.name / "images"
        sizes = sorted(((p.stat().st_size, p.name) for p in images.iterdir() if p.is_file()),
                       reverse=True) if images.is_dir() else []
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.log_dir / "images.txt").write_text("".join(f"{n:>10} {name}\n" for n, name in sizes))


def _phase(report: dict, name: str) -> dict | None:
    return next((p for p in report.get("phases", []) if p["name"] == name), None)


def run_one(cfg: Config, addresses: dict[str, str], *, mode: str, memory_mib: int,
            dirty_mibps: float, wan_rate: str | None, rep: int, index: int,
            transport: str = "lab", outage_s: float = 0.0) -> RunResult:
    res = RunResult(mode=mode, memory_mib=memory_mib, dirty_mibps=dirty_mibps, wan_rate=wan_rate, rep=rep,
                    transport=transport, outage_s=outage_s)
    src, dst = TRANSPORT_HOSTS[transport]
    name = f"bench{index}"
    publish = [f"{cfg.host_port}:{CONTAINER_PORT}"]
    inv = Inventory()
    cmd = workload.command(port=CONTAINER_PORT, memory_mib=memory_mib, dirty_mibps=dirty_mibps)
    containers.run(host=src, name=name, image="host", command=cmd, publish=publish, env=[], inv=inv)
    held = None
    try:
        conn = bench_client.connect(addresses[src], cfg.host_port, READY_TIMEOUT_S)
        conn.close()
        # a request sent into an outage waits it out (and the client's own back-off after it),
        # one sent into a stop-and-copy freeze waits for all of memory to cross the link
        rate_bps, _ = lab.parse_wan(wan_rate)
        freeze_s = 2 * memory_mib * 2**20 * 8 / rate_bps if mode == "stopcopy" and rate_bps else 0
        held = bench_client.HeldClient(addresses[src], cfg.host_port,
                                       fallback=addresses[dst] if mode == "cold" else None,
                                       request_timeout_s=bench_client.REQUEST_TIMEOUT_S + 2 * outage_s
                                       + freeze_s).start()
        time.sleep(cfg.window_s)
        if mode == "postcopy" and not outage_s and transport == "lab":   # its tunnel is up (probed)
            res.bulk_window = _bulk_transfer(src, dst, cfg.window_s)
        log_dir = cfg.out_dir / "criu-logs" / name if cfg.keep_criu_logs else None
        rec = _Recorder(name, src, dst, log_dir)
        try:
            if mode == "cold":
                report = cold.restart(inv, name, dst, publish=publish, on_event=rec)
            else:
                # the outage: the destination drops everything from and to the source's public
                # address for OUTAGE s, from just before the lazy phase (a named fault point)
                faults = Faults.parse(f"before-lazy:destination:wan-down-{outage_s:g}" if outage_s else "",
                                      [p.name for p in PHASES])
                with Session(inv) as session:
                    report = Migration(session, name, dst, mode=Mode(mode), on_event=rec, faults=faults).run()
        finally:
            res.timeline = rec.events
        res.report = report.to_dict()
        _lazy_numbers(res)
        _transfer_rate(res, cfg)
        time.sleep(cfg.window_s)
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


def _lazy_numbers(res: RunResult) -> None:
    """The lazy phase's length, and (with an outage) how long after the link's return the next
    page arrived (progress is polled every 0.2 s: that is the resolution)."""
    start = next((e["t"] for e in res.timeline if e.get("name") == "lazy" and e.get("state") == "start"), None)
    end = next((e for e in res.timeline if e.get("name") == "lazy" and e.get("state") == "end"), None)
    if start is None or end is None:
        return
    res.lazy_ms = end["ms"]
    if not res.outage_s:
        return
    back = start + res.outage_s
    lazy = [e for e in res.timeline if e["kind"] == "lazy"]
    before = [e["copied_pages"] for e in lazy if e["t"] <= back]
    after = next((e for e in lazy if e["t"] > back and e["copied_pages"] > (before[-1] if before else 0)), None)
    res.recovery_s = (after["t"] - back) if after else (end["t"] - back if end["t"] > back else None)


TUNNEL_PROBE_S = 3               # the throughput probe sends for this long (or TUNNEL_PROBE_MAX)
TUNNEL_PROBE_MAX = 512 << 20


def tunnel_throughput(src: str, dst: str) -> float:
    """MiB/s through the src-dst tunnel, measured with a bulk transfer from agent to agent."""
    with Session(Inventory()) as session:
        session.tunnel(src, dst)
        return tunnels.throughput(session, src, dst, TUNNEL_PROBE_MAX, seconds=TUNNEL_PROBE_S)


def _bulk_transfer(src: str, dst: str, seconds: float) -> tuple[float, float]:
    """A bulk transfer through the tunnel for ``seconds``, while the client runs: the client's
    request rate meanwhile is what moving bytes costs the lab itself (both hosts share this
    machine's CPUs: wireguard-go at both ends), without post-copy's faults."""
    with Session(Inventory()) as session:
        session.agent(src), session.agent(dst)         # connected before the window opens
        t0 = time.time()
        tunnels.throughput(session, src, dst, TUNNEL_PROBE_MAX, seconds=seconds)
        return t0, time.time()


def _transfer_rate(res: RunResult, cfg: Config) -> None:
    """How fast memory crossed, as a fraction of the tunnel's own throughput: the lazy phase
    (post-copy, without outage) or the images' sync (stop-and-copy, memory included)."""
    res.tunnel_mibps = cfg.tunnel_mibps.get(res.wan_rate or "-")
    rep = res.report
    if not res.tunnel_mibps or res.outage_s:
        return
    if res.mode == "postcopy" and res.lazy_ms:
        moved, seconds = rep.get("lazy_pages", 0) * rep.get("page_size", 4096), res.lazy_ms / 1000
    elif res.mode == "stopcopy" and rep.get("freeze_breakdown_ms", {}).get("images"):
        moved, seconds = rep.get("images_bytes", 0), rep["freeze_breakdown_ms"]["images"] / 1000
    else:
        return
    if moved and seconds > 0:
        res.transfer_of_tunnel = moved / seconds / (1 << 20) / res.tunnel_mibps


def _client_numbers(res: RunResult, held: bench_client.HeldClient) -> None:
    rep = res.report
    res.state = held.state(res.verify_bad_pages) if res.ok else "unknown"
    res.answers = len(held.samples)
    res.client_longest_wait_ms = held.longest_wait_s * 1000
    res.client_retransmits = held.retransmitted()
    if held.samples:
        res.client_longest_sent = max(held.samples, key=lambda s: s.wait_s).sent
    res.freeze_ms, res.total_ms = rep.get("freeze_ms"), rep.get("total_ms")
    first = rep.get("phases", [{}])[0] if rep.get("phases") else None
    freeze = _phase(rep, "dump") or _phase(rep, "stop") or first      # the freeze's first phase
    if res.bulk_window:
        res.rate_bulk_rps = held.rate_between(*res.bulk_window)
    if freeze and held.samples:
        before_end = res.bulk_window[0] if res.bulk_window else freeze["start"]
        res.rate_before_rps = held.rate_between(held.samples[0].sent, before_end)
    lazy = _phase(rep, "lazy")
    if lazy and lazy.get("end"):
        res.rate_lazy_rps = held.rate_between(lazy["start"], lazy["end"])
    if rep.get("started_at") and rep.get("total_ms") and held.samples:
        # the path the client's requests take from now on (a post-copy source forwards them
        # through the tunnel), with no page left to move: what the lazy phase is measured against
        res.rate_after_rps = held.rate_between(rep["started_at"] + rep["total_ms"] / 1000,
                                               held.samples[-1].sent)
    res.bytes_moved = (rep.get("images_bytes", 0) + rep.get("fs_bytes", 0)
                       + rep.get("hot_pages", {}).get("sent_bytes", 0)
                       + rep.get("lazy_pages", 0) * rep.get("page_size", 0))


def sweep(cfg: Config, progress: Callable[[str], None] = lambda line: None) -> list[RunResult]:
    """Every run of ``cfg``, in a child process that works on the bench's own lab."""
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    request = {"config": _config_to_json(cfg), "parent_pid": os.getpid(),
               "debug": logging.getLogger(cloudmig_log.LOGGER_NAME).isEnabledFor(logging.DEBUG)}
    read_fd, write_fd = os.pipe()
    with signals.sigterm_interrupts():
        try:
            # its own session: Ctrl-C reaches this process only, which passes it on once
            proc = subprocess.Popen([sys.executable, "-m", "cloudmig.bench.runner", str(write_fd),
                                     json.dumps(request)],
                                    env=lab.process_env(cfg.state_dir, cfg.lab_id), pass_fds=(write_fd,),
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        child = _FromChild(read_fd, progress)
        try:
            child.read()
            code = proc.wait()
        except BaseException:
            _interrupt(proc, child)
            raise
        finally:
            child.close()
    if child.failure is not None:
        raise _error_from_child(child.failure)
    if code == 130 and not child.done:
        raise KeyboardInterrupt
    if not child.done:
        raise errors.MigrationError(
            f"The bench's process ended (exit code {code}) before the sweep did.",
            hint=f"See its output above. If it left its lab, remove it with CLOUDMIG_STATE_DIR={cfg.state_dir} "
                 f"CLOUDMIG_LAB_ID={cfg.lab_id} cloudmig lab down")
    return child.results


class _FromChild:
    """``sweep``'s end of the pipe: progress lines passed on, results and the outcome kept."""

    def __init__(self, fd: int, progress: Callable[[str], None]) -> None:
        self.fh = os.fdopen(fd, encoding="utf-8")
        self.progress = progress
        self.results: list[RunResult] = []
        self.failure: dict | None = None
        self.done = False

    def read(self, *, quiet: bool = False) -> None:
        """Until the child says it is done or ends; ``quiet``: a failing ``progress`` is ignored."""
        for line in self.fh:
            message = json.loads(line)
            if "progress" in message:
                try:
                    self.progress(message["progress"])
                except Exception:
                    if not quiet:
                        raise
            elif "result" in message:
                self.results.append(RunResult(**message["result"]))
            elif "error" in message:
                self.failure = message["error"]
            elif message.get("done"):
                self.done = True
                return

    def close(self) -> None:
        self.fh.close()


def _interrupt(proc: subprocess.Popen, child: _FromChild) -> None:
    """Interrupt the child like Ctrl-C and follow it until it has removed its lab; a second
    Ctrl-C must not leave that clean-up half way (a second SIGTERM leaves it going on alone)."""
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        child.read(quiet=True)
        proc.wait()
    finally:
        signal.signal(signal.SIGINT, old_int)


def _error_from_child(failure: dict) -> errors.CloudmigError:
    cls = errors.by_name(failure.get("type", "")) or errors.CloudmigError
    try:
        exc = cls(failure.get("message", ""), hint=failure.get("hint"))
    except TypeError:
        exc = errors.CloudmigError(f"{failure.get('type')}: {failure.get('message')}", hint=failure.get("hint"))
    exc.remote_traceback = failure.get("traceback", "")  # type: ignore[attr-defined]  (--debug shows it)
    return exc


def _config_to_json(cfg: Config) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}


def _config_from_json(data: dict) -> Config:
    cfg = Config(**data)
    cfg.out_dir, cfg.state_dir = Path(cfg.out_dir), Path(cfg.state_dir)
    return cfg


def _sweep_in_lab(cfg: Config, progress: Callable[[str], None],
                  on_result: Callable[[RunResult], None]) -> None:
    """The sweep itself, in a process whose environment names the bench's lab."""
    index = 0
    for wan_rate in cfg.wan_rates:
        # the lab shapes its links at creation: one lab per WAN
        progress(f"lab {cfg.lab_id} up (WAN {wan_rate or 'unshaped'})")
        with contextlib.ExitStack() as stack:
            addresses = stack.enter_context(lab.own_lab(cfg.state_dir, cfg.lab_id, hosts=2, wan=wan_rate,
                                                        progress=lambda line: progress("  " + line)))
            src, dst = TRANSPORT_HOSTS["lab"]
            mibps = tunnel_throughput(src, dst)
            cfg.tunnel_mibps[wan_rate or "-"] = mibps
            progress(f"tunnel {src} -> {dst}: {mibps:.0f} MiB/s (bulk TCP through it)")
            if "ssh" in cfg.transports:
                progress("hosts s1, s2 adopted over SSH inside h1, h2")
                addresses |= stack.enter_context(lab.adopted_over_ssh(cfg.state_dir, addresses, progress))
            for memory_mib in cfg.sizes_mib:
                for dirty in cfg.dirty_mibps:
                    for rep in range(cfg.repetitions):
                        for transport in cfg.transports:
                            for mode, outage in _runs(cfg):
                                index += 1
                                r = run_one(cfg, addresses, mode=mode, memory_mib=memory_mib,
                                            dirty_mibps=dirty, wan_rate=wan_rate, rep=rep, index=index,
                                            transport=transport, outage_s=outage)
                                on_result(r)
                                progress(_summary(r))
        progress(f"lab {cfg.lab_id} removed")


def _runs(cfg: Config) -> list[tuple[str, float]]:
    """(mode, outage) of each run of one size: every mode without an outage, then post-copy
    with each outage (there is no lazy transfer to cut in the other modes)."""
    runs = [(mode, 0.0) for mode in cfg.modes]
    return runs + [("postcopy", o) for o in cfg.outages_s if o and "postcopy" in cfg.modes]


def _summary(r: RunResult) -> str:
    if not r.ok:
        return f"{r.mode:<8} {r.memory_mib:>5} MiB: FAILED {r.error}"
    return (f"{r.transport:<3} {r.mode:<8} {r.memory_mib:>5} MiB dirty {r.dirty_mibps:g} MiB/s "
            f"WAN {r.wan_rate or '-'}: "
            f"freeze {r.freeze_ms:.0f} ms, longest wait {r.client_longest_wait_ms:.0f} ms, "
            f"total {r.total_ms:.0f} ms, state {r.state}"
            + (f"; WAN cut {r.outage_s:g} s, next page {r.recovery_s:.1f} s after its return"
               if r.outage_s and r.recovery_s is not None else ""))


class _Pipe:
    """The child's end of the pipe to ``sweep``: one JSON object per line."""

    def __init__(self, fd: int) -> None:
        self.fh = os.fdopen(fd, "w", encoding="utf-8")
        self.broken = False

    def send(self, **message: Any) -> None:
        self.fh.write(json.dumps(message, default=str) + "\n")
        self.fh.flush()

    def send_if_read(self, **message: Any) -> None:
        """For progress lines (they also come during the lab's clean-up, which must go on if
        ``sweep`` is gone) and the last message."""
        if self.broken:
            return
        try:
            self.send(**message)
        except OSError:
            self.broken = True
            log.warning("the bench's parent process stopped listening; the lab is removed all the same")

    def progress(self, line: str) -> None:
        self.send_if_read(progress=line)

    def result(self, r: RunResult) -> None:
        self.send(result=dataclasses.asdict(r))       # no reader: the sweep stops (and cleans up)


def _interrupted_when_parent_dies(parent_pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG): %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != parent_pid:          # it died before prctl
        raise KeyboardInterrupt


def _child_main(argv: list[str]) -> int:
    """``python -m cloudmig.bench.runner FD REQUEST``: the child ``sweep`` starts."""
    fd, request = int(argv[0]), json.loads(argv[1])
    cloudmig_log.setup(verbose=request["debug"])
    # sweep interrupts this process with SIGINT, even if it was started with SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    pipe = _Pipe(fd)
    try:
        _interrupted_when_parent_dies(request["parent_pid"])
        _sweep_in_lab(_config_from_json(request["config"]), pipe.progress, pipe.result)
    except errors.CloudmigError as exc:
        pipe.send_if_read(error={"type": type(exc).__name__, "message": exc.message, "hint": exc.hint,
                                 "traceback": traceback.format_exc()})
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    pipe.send_if_read(done=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
