#!/usr/bin/env python3
"""Run both simulated clouds (cloudsim) until stopped: what `make vendor-exit` talks to.

    python3 examples/vendor-exit/simulate.py --lab-id vx --env-file /tmp/x/cloud.env &
    . /tmp/x/cloud.env            # AWS_ENDPOINT_URL, AZURE_SUBSCRIPTION_ID, IDENTITY_ENDPOINT, ...
    kill %1                       # VMs, servers and the lab bridge go with it

The env file is written (0600: it holds the simulated clouds' keys) once both are serving, and
removed on exit.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cloudsim.simulator import CloudSimulator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab-id", required=True, help="1-4 letters/digits: the lab subnet of the simulated VMs")
    parser.add_argument("--env-file", required=True, type=Path, help="where to write the clouds' env")
    parser.add_argument("--workdir", type=Path, help="the VMs' and servers' files (default: beside the env file)")
    args = parser.parse_args()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    workdir = args.workdir or args.env_file.parent / "cloudsim"
    sim = CloudSimulator.start(workdir, args.lab_id, Path(sys.executable).parent.parent)
    try:
        fd = os.open(args.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            for key, value in sim.env.items():
                fh.write(f"export {key}={shlex.quote(value)}\n")
        print(f"cloudsim: EC2 at {sim.ec2.url}, ARM at {sim.arm.url}; VMs get 198.18.{sim.topo.subnet_octet}.x",
              flush=True)
        stop.wait()
    finally:
        args.env_file.unlink(missing_ok=True)
        sim.stop()
        print("cloudsim: stopped (VMs, servers, lab bridge)", flush=True)


if __name__ == "__main__":
    main()
