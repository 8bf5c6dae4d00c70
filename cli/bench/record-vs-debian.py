#!/usr/bin/env python3
"""Benchmark: `trace-cmd record -e sched -o X sleep S`, the Rust CLI against
Debian's trace-cmd 3.1.6 (run inside ftrace-sandbox), alternated A/B.

Prints per run: wall time, CPU time (user+sys of the whole process tree, from
wait4), events lost (overrun + dropped events of the file's CPU stats, read with
Debian's `trace-cmd report --stat`) and events recorded; then medians and the
Rust/Debian ratios. Both record on the top-level buffer; the script puts back the
top-level events, tracing_on, trace_clock and buffer size it found.

usage: record-vs-debian.py [--rounds N] [--seconds S] [--rust PATH] [--sandbox PATH]
Needs root. Not a test: timings are printed, never asserted.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topstate import DEBIAN, SANDBOX, require, restore, snapshot  # noqa: E402


def run(cmd):
    """Runs cmd, returns (wall s, cpu s, exit status)."""
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - start
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[0]} failed: {err}")
    return wall, ru.ru_utime + ru.ru_stime


def file_stats(path):
    """(events lost, events recorded) of a trace.dat, via Debian's report."""
    st = subprocess.run([DEBIAN, "report", "--stat", "-i", path],
                        capture_output=True, text=True, check=True).stdout
    lost = sum(int(n) for n in re.findall(r"^(?:overrun|dropped events): (\d+)", st, re.M))
    rep = subprocess.run([DEBIAN, "report", "-i", path],
                         capture_output=True, text=True, check=True).stdout
    events = sum(1 for l in rep.splitlines() if re.search(r" \[\d{3}\] +\d", l))
    return lost, events


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rust", default=os.path.join(here, "../../target/release/trace-cmd"))
    ap.add_argument("--sandbox", default=SANDBOX,
                    help="ftrace-sandbox that Debian's trace-cmd runs in (default: %(default)s)")
    a = ap.parse_args()
    require(a.rust, DEBIAN, a.sandbox)
    secs = str(a.seconds)
    tools = {
        "rust": lambda out: [a.rust, "record", "-q", "-e", "sched", "-o", out, "sleep", secs],
        "debian": lambda out: [a.sandbox, DEBIAN, "record", "-q", "-e", "sched", "-o", out,
                               "sleep", secs],
    }
    found = snapshot()
    rows = {"rust": [], "debian": []}
    try:
        with tempfile.TemporaryDirectory(prefix="record-bench-") as tmp:
            print(f"{'round':>5} {'tool':>7} {'wall s':>8} {'cpu s':>7} {'lost':>6} {'events':>8}")
            for r in range(a.rounds):
                order = ["rust", "debian"] if r % 2 == 0 else ["debian", "rust"]
                for t in order:
                    out = os.path.join(tmp, f"{t}.dat")
                    wall, cpu = run(tools[t](out))
                    restore(found)
                    lost, events = file_stats(out)
                    rows[t].append((wall, cpu, lost, events))
                    print(f"{r:>5} {t:>7} {wall:>8.3f} {cpu:>7.3f} {lost:>6} {events:>8}")
                    os.unlink(out)
    finally:
        restore(found)
    med = {t: [statistics.median(c) for c in zip(*v)] for t, v in rows.items()}
    print()
    for t in ("rust", "debian"):
        w, c, l, e = med[t]
        print(f"median {t:>7}: wall {w:.3f} s, cpu {c:.3f} s, lost {l:.0f}, events {e:.0f}")
    rw = med["rust"][0] / med["debian"][0]
    rc = med["rust"][1] / med["debian"][1] if med["debian"][1] else float("inf")
    print(f"ratio rust/debian: wall {rw:.3f}x, cpu {rc:.3f}x; "
          f"lost rust {sum(x[2] for x in rows['rust'])}, debian {sum(x[2] for x in rows['debian'])}")


if __name__ == "__main__":
    main()
