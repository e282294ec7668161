"""`cloudmig bench`: freeze time, client wait and total time against memory size, write rate
and WAN rate, post-copy side by side with stop-and-copy and cold restart.

    from cloudmig.bench import runner, output, plots, targets
    results = runner.sweep(runner.Config(sizes_mib=[64, 256, 1024]))
    checks = targets.check(results)

Modules: ``workload`` (the container's TCP server), ``client`` (one held connection, every
request timed), ``cold`` (the cold-restart baseline), ``lab`` (the bench's own lab),
``runner`` (runs and the sweep), ``targets``, ``output`` (JSON, table), ``plots`` (PNGs).
See docs/benchmarks.md.
"""

__all__ = ["client", "cold", "lab", "output", "plots", "runner", "targets", "workload"]
