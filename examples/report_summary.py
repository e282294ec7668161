#!/usr/bin/env python3
"""The end of the demos: a migration report and the live client's summary, in a few lines.

    python3 examples/report_summary.py report.json client.json   # exit 1 unless both went well
"""

import json
import sys

r = json.load(open(sys.argv[1]))
c = json.load(open(sys.argv[2]))
keys = ["container", "source", "destination", "mode", "ok", "freeze_ms", "total_ms", "memory_bytes",
        "lazy_pages", "faulted_pages", "pushed_pages", "fs_bytes"]
for k in keys:
    v = r[k]
    print(f"   {k:<14} {round(v, 1) if isinstance(v, float) else v}")
print("   phases        " + ", ".join(f"{p['name']} {p['ms']:.0f} ms" for p in r["phases"]))
print(f"   client        {c['requests']} requests on one connection to {c['peer']}, "
      f"longest wait {c['longest_wait_ms']} ms, errors {len(c['errors'])}")
sys.exit(0 if r["ok"] and c["same_connection"] else 1)
