"""A forked child (what pyroute2 makes to reach other namespaces, then stops with SIGTERM) must
die at once on SIGTERM and never run its parent's clean-up code; the parent itself still turns
SIGTERM into KeyboardInterrupt. The CI failure this guards: a bench's forked child ran the lab's
"up failed" handler and removed a host under its parent."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    from cloudmig import signals
    cleanups = sys.argv[1]
    with signals.sigterm_interrupts():
        try:
            pid = os.fork()
            if pid == 0:
                time.sleep(30)           # the child idles until its parent stops it
                os._exit(0)
            time.sleep(0.2)
            os.kill(pid, signal.SIGTERM)
            _, status = os.waitpid(pid, 0)
            print("child", os.waitstatus_to_exitcode(status))
            os.kill(os.getpid(), signal.SIGTERM)   # and the parent itself
            time.sleep(5)
            print("not interrupted")
        except KeyboardInterrupt:
            print("parent interrupted")
        finally:
            with open(cleanups, "a") as fh:
                fh.write(f"{os.getpid()}\\n")
""")


def test_sigterm_in_a_forked_child_runs_none_of_the_parents_code(tmp_path):
    cleanups = tmp_path / "cleanups"
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(cleanups)], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == ["child 143", "parent interrupted"], res.stdout
    assert len(cleanups.read_text().split()) == 1      # only the parent cleaned up
