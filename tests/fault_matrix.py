"""The fault matrix: every fault crossed with every phase of both modes, each cell with the
outcome we promise, written down here (tests/test_fault_matrix.py runs the cells and checks
them; `make faults` runs them all and writes docs/faults.md).

A fault fires just before its phase begins (the engine's named points, CLOUDMIG_FAULTS). The
outcomes:

- completed:    the container ends on the destination, data intact, client still connected
- refused:      the preflight saw the problem: nothing was changed
- rolled back:  it ends on the source, as it was, client still connected
- taken back:   after the resume its memory could no longer arrive (post-copy's one
                weakness): the destination's copy is stopped, the source's frozen copy runs
                again as at the freeze; what it did on the destination since is lost, its
                clients' connections too (lost by design)
- resumed: X    the controller died; `cloudmig migrate --resume` then ended it as X
"""

from __future__ import annotations

import os

PHASES = {
    "postcopy": ["preflight", "prepare", "arm", "hold", "dump", "restore", "switch", "lazy", "cleanup"],
    "stopcopy": ["preflight", "prepare", "arm", "hold", "dump", "restore", "switch", "cleanup"],
}
AFTER_RESUME = ("switch", "lazy", "cleanup")

FAULTS = {                       # name: CLOUDMIG_FAULTS side:action
    "controller SIGKILL": "controller:kill",
    "source agent SIGKILL": "source:kill-agent",
    "destination agent SIGKILL": "destination:kill-agent",
    "source CRIU killed": "source:kill-criu",
    "destination CRIU killed": "destination:kill-criu",
    "tunnel killed": "source:kill-tunnel",
    "destination disk full": "destination:fill-disk",
    "WAN down 5 s": "destination:wan-down-5",
    "WAN down 60 s": "destination:wan-down-60",
}


def expected(fault: str, phase: str, mode: str) -> str:
    after = phase in AFTER_RESUME
    if fault == "controller SIGKILL":
        return "resumed: completed" if after else "resumed: rolled back"
    if fault.endswith("agent SIGKILL"):
        # revived before the preflight; after the resume a new agent takes its side over; the
        # restore needs only the source's CRIU (its page server), which outlives its agent
        if after or phase == "preflight" or (fault.startswith("source") and phase == "restore"):
            return "completed"
        return "rolled back"
    if fault == "source CRIU killed":
        if mode == "stopcopy" or phase in ("preflight", "prepare", "arm", "cleanup"):
            return "completed"   # no CRIU of the source's runs at that point
        return "taken back" if after else "rolled back"
    if fault == "destination CRIU killed":
        if phase in ("preflight", "prepare", "arm", "cleanup") or (mode == "stopcopy" and after):
            return "completed"   # nothing of CRIU's runs there at that point
        return "taken back" if after else "rolled back"
    if fault == "destination disk full":
        # what the migration writes there (CRIU's images, work files and logs) cannot be
        # written: refused before the resume; after it nothing needs writing any more
        if phase == "preflight":
            return "refused"     # the preflight sees the disk full: nothing is changed
        return "completed" if after else "rolled back"
    if fault == "tunnel killed":
        return "completed"       # brought back with its routes: at the prepare, or when pages stall
    if fault.startswith("WAN down"):
        if after:
            return "completed"   # TCP (RTO capped at 1 s) and the tunnel ride it out
        # before the resume the freeze is bounded: a transfer that cannot get through within
        # its timeout (post-copy's lazy-pages daemon's connect at the restore: 3 s) rolls back
        if phase == "restore" and mode == "stopcopy":
            return "completed"   # its restore needs nothing from the source any more
        if fault == "WAN down 60 s" or phase == "restore":
            return "rolled back"
        return "completed"       # a 5 s outage before the restore: TCP rides it out
    raise KeyError(fault)


# the slice `make test` runs: a fault in every phase (of post-copy, which has them all), each
# fault at least once (a WAN cut: in the bench's smoke test, tests/test_bench.py), the interesting
# ones after the resume, and stop-and-copy's own cases
SLICE = [
    ("source agent SIGKILL", "preflight", "postcopy"),
    ("controller SIGKILL", "prepare", "postcopy"),
    ("destination agent SIGKILL", "arm", "postcopy"),
    ("source CRIU killed", "hold", "postcopy"),
    ("source agent SIGKILL", "dump", "postcopy"),
    ("controller SIGKILL", "restore", "postcopy"),
    ("destination CRIU killed", "restore", "postcopy"),
    ("destination agent SIGKILL", "switch", "postcopy"),
    ("destination CRIU killed", "lazy", "postcopy"),
    ("tunnel killed", "lazy", "postcopy"),
    ("source agent SIGKILL", "cleanup", "postcopy"),
    ("destination CRIU killed", "dump", "stopcopy"),
    ("controller SIGKILL", "switch", "stopcopy"),
    ("destination disk full", "arm", "stopcopy"),
]


def cells(full: bool) -> list[tuple[str, str, str]]:
    """(fault, phase, mode): every cell, or the slice."""
    if full:
        return [(f, p, m) for m in PHASES for p in PHASES[m] for f in FAULTS]
    return SLICE


FULL = os.environ.get("CLOUDMIG_FAULT_MATRIX") == "full"
RESULTS = os.environ.get("CLOUDMIG_FAULT_RESULTS")      # JSON lines, one per cell run


def markdown(results: list[dict], when: str) -> str:
    """docs/faults.md's table from the cells' results (JSON lines the test wrote)."""
    for r in results:               # judged against the outcomes written down now
        r["expected"] = expected(r["fault"], r["phase"], r["mode"])
        home = "h2" if r["outcome"].endswith("completed") else "h1"
        r["survived"] = (r["outcome"] == r["expected"] and r["runs_on"] == [home] and r["data_intact"]
                         and not r["left"] and (r["client_kept"] or r["outcome"] == "taken back"))
    runs = len(results)
    survived = sum(r["survived"] for r in results)
    lost = [r for r in results if not r["data_intact"] and r["phase"] not in AFTER_RESUME]
    lines = [
        "# Faults at every phase, measured",
        "",
        "Generated by `make faults` (tests/fault_matrix.py writes this page from the results of",
        f"tests/test_fault_matrix.py), {when}. Each cell is a real post-copy or stop-and-copy",
        "migration of a Redis server (50,000 keys, ~60 MiB) between two lab hosts whose WAN is",
        "shaped to 200 mbit, with a client holding one TCP connection through the source's public",
        "address; the fault fires just before the phase begins. A cell *survived* when its outcome",
        "is the one written down for it and the container then runs in exactly one place, its data",
        "intact, nothing of the migration left (CRIU, files, frozen or locked container, held",
        "packets), and its client still connected (except where the outcome says the connections",
        "are lost by design).",
        "",
        f"**{runs} cells run, {survived} survived; data lost before the resume: {len(lost)} cells.**",
        "",
        "Outcomes: *completed* (it moved), *rolled back* (it stayed, as it was), *taken back* (after",
        "the resume its memory could no longer arrive: the destination's copy was stopped and the",
        "source's frozen copy runs again as at the freeze; what it did on the destination since",
        "and its clients' connections are lost: post-copy's weakness, by design), *resumed: X* (the",
        "controller was killed; `cloudmig migrate --resume` ended it as X).",
        "",
    ]
    for mode in PHASES:
        rows = [r for r in results if r["mode"] == mode]
        if not rows:
            continue
        faults = [f for f in FAULTS if any(r["fault"] == f for r in rows)]
        lines += [f"## {mode}", "", "| phase | " + " | ".join(faults) + " |",
                  "|---|" + "---|" * len(faults)]
        for phase in PHASES[mode]:
            cells_ = []
            for fault in faults:
                r = next((r for r in rows if r["fault"] == fault and r["phase"] == phase), None)
                if r is None:
                    cells_.append("-")
                    continue
                mark = "ok" if r["survived"] else "**FAILED**"
                cells_.append(f"{r['outcome']} ({mark}, {r['seconds']:.0f} s, wait {r['client_longest_wait_s']:.1f} s)")
            lines.append(f"| {phase} | " + " | ".join(cells_) + " |")
        lines.append("")
    failed = [r for r in results if not r["survived"]]
    if failed:
        lines += ["## Cells that did not survive", ""]
        for r in failed:
            lines.append(f"- {r['fault']} before {r['phase']} ({r['mode']}): expected {r['expected']}, "
                         f"got {r['outcome']}; runs on {r['runs_on']}, data intact {r['data_intact']}, "
                         f"left: {', '.join(r['left']) or 'nothing'}")
        lines.append("")
    lines += ["Each cell's figures: the migration's wall time (with the recovery, for the controller's",
              "faults) and the client's longest wait for one answer. A client whose request went into",
              "a 60 s outage waits ~105 s: its own kernel's back-off (the test's client runs on the",
              "machine itself, with Linux's default 120 s cap) sends the request again ~100 s after it;",
              "the hosts' and containers' side is back within a second (docs/network.md). Before the",
              "resume a long outage rolls back once a transfer's timeout passes, so the freeze stays",
              "bounded (~8 s here).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    import datetime
    import json
    import sys
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    # a cell run again (e.g. `pytest -k`) counts with its last result
    results = list({(r["fault"], r["phase"], r["mode"]): r for r in rows}.values())
    when = datetime.date.today().isoformat()
    with open(sys.argv[2], "w") as out:
        out.write(markdown(results, when))
    print(f"{sys.argv[2]}: {len(results)} cells, {sum(r['survived'] for r in results)} survived")
