#!/usr/bin/env python3
"""Benchmark: `trace-cmd record` of the Rust CLI against Debian's trace-cmd 3.1.6
(run inside ftrace-sandbox), alternated A/B, both writing their default format
(trace.dat v7 with zstd) on the top-level buffer.

Two workloads, each the traced command (this script, run with `--workload`):
  sched    processes ping-ponging bytes through pipes (`-e sched`);
  markers  a flood of trace_marker writes (`-e sched:sched_kthread_stop`, a rare
           event, so that the markers are the data).
By default each does a fixed amount of work (--sched-trips round trips of 4 pipe
pairs, --markers markers; about 10 s each on an idle 2-CPU machine), so both tools
record the same events and the file sizes compare directly. With --seconds S each
runs for S seconds instead: then the tool that disturbs the workload less records
more events in the same time and gets a bigger file (bytes per event, printed too,
is the fair size figure there). The workload writes, when it ends, its end time
(CLOCK_REALTIME) and its own CPU seconds into a file.

Prints per run: wall time; CPU seconds of the recorder (user+sys of the whole
process tree from wait4, minus the workload's own); the time from the workload's
end to the record process's exit, i.e. to the file being complete; the file size;
events lost (overrun + dropped events of the file's CPU stats, read with Debian's
`trace-cmd report --stat`) and events recorded. Then medians and the Rust/Debian
ratios of size, CPU seconds and end-to-file time (issue 13's goals: <= 1.0, <= 0.8,
<= 0.3), and the events lost by each. The script puts back the top-level events,
tracing_on, trace_clock and buffer size it found.

usage: record-vs-debian.py [--rounds N] [--sched-trips N] [--markers N] [--seconds S]
                           [--workloads sched,markers] [--rust PATH] [--sandbox PATH]
Needs root. Not a test: timings are printed, never asserted.
"""
import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topstate import DEBIAN, SANDBOX, TRACING, require, restore, snapshot  # noqa: E402

EVENTS = {"sched": ["-e", "sched"], "markers": ["-e", "sched:sched_kthread_stop"]}


def workload(kind, seconds, count, end_file):
    """The traced command: runs `kind` `count` times (or, when count is 0, for
    `seconds`), then writes its end time and its CPU seconds (its own and its
    children's) into end_file."""
    deadline = time.monotonic() + seconds
    done = 0

    def more(step):
        nonlocal done
        done += step
        return done <= count if count else time.monotonic() < deadline
    if kind == "sched":
        pids = []
        for _ in range(4):
            r1, w1 = os.pipe()
            r2, w2 = os.pipe()
            pid = os.fork()
            if pid == 0:
                # Every child holds copies of the pipes, so no EOF: "q" ends it.
                while os.read(r1, 1) == b"x":
                    os.write(w2, b"x")
                os._exit(0)
            pids.append((pid, w1, r2))
        while more(1):
            for _, w, r in pids:
                os.write(w, b"x")
            for _, w, r in pids:
                os.read(r, 1)
        for pid, w, r in pids:
            os.write(w, b"q")
            os.waitpid(pid, 0)
    else:
        with open(os.path.join(TRACING, "trace_marker"), "w") as m:
            i = 0
            while more(100):
                for _ in range(100):
                    m.write(f"tcrs bench marker {i}\n")
                    m.flush()
                    i += 1
    end = time.time()
    ru_s = resource.getrusage(resource.RUSAGE_SELF)
    ru_c = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = ru_s.ru_utime + ru_s.ru_stime + ru_c.ru_utime + ru_c.ru_stime
    with open(end_file, "w") as f:
        f.write(f"{end} {cpu}\n")


def run(cmd, end_file):
    """Runs cmd; returns (wall s, recorder cpu s, end-to-file s)."""
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    done = time.time()
    wall = time.monotonic() - start
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[0]} failed: {err}")
    with open(end_file) as f:
        end, wl_cpu = (float(x) for x in f.read().split())
    return wall, ru.ru_utime + ru.ru_stime - wl_cpu, done - end


def file_stats(path):
    """(events lost, events recorded) of a trace.dat, via Debian's report."""
    st = subprocess.run([DEBIAN, "report", "--stat", "-i", path],
                        capture_output=True, text=True, check=True).stdout
    lost = sum(int(n) for n in re.findall(r"^(?:overrun|dropped events): (\d+)", st, re.M))
    rep = subprocess.run([DEBIAN, "report", "-i", path],
                         capture_output=True, text=True, check=True).stdout
    events = sum(1 for l in rep.splitlines() if re.search(r" \[\d{3}\] +\d", l))
    return lost, events


def ratio(a, b):
    return a / b if b else float("inf")


def bench(a, kind, tmp):
    me = os.path.abspath(__file__)
    end_file = os.path.join(tmp, "end")
    count = 0 if a.seconds else {"sched": a.sched_trips, "markers": a.markers}[kind]
    cmd = [sys.executable, me, "--workload", kind, "--seconds", str(a.seconds or 0),
           "--count", str(count), "--end-file", end_file]
    tools = {
        "rust": lambda out: [a.rust, "record", "-q", *EVENTS[kind], "-o", out, *cmd],
        "debian": lambda out: [a.sandbox, DEBIAN, "record", "-q", *EVENTS[kind], "-o", out,
                               *cmd],
    }
    rows = {"rust": [], "debian": []}
    print(f"workload {kind}, " + (f"{a.seconds} s" if a.seconds else f"{count} iterations"))
    print(f"{'round':>5} {'tool':>7} {'wall s':>8} {'cpu s':>7} {'end->file s':>11} "
          f"{'size KiB':>9} {'lost':>6} {'events':>8}")
    for r in range(a.rounds):
        order = ["rust", "debian"] if r % 2 == 0 else ["debian", "rust"]
        for t in order:
            out = os.path.join(tmp, f"{t}.dat")
            wall, cpu, tail = run(tools[t](out), end_file)
            restore(a.found)
            size = os.path.getsize(out)
            lost, events = file_stats(out)
            rows[t].append((wall, cpu, tail, size, lost, events))
            print(f"{r:>5} {t:>7} {wall:>8.3f} {cpu:>7.3f} {tail:>11.3f} "
                  f"{size / 1024:>9.0f} {lost:>6} {events:>8}")
            os.unlink(out)
    med = {t: [statistics.median(c) for c in zip(*v)] for t, v in rows.items()}
    for t in ("rust", "debian"):
        w, c, tail, s, l, e = med[t]
        print(f"median {t:>7}: wall {w:.3f} s, cpu {c:.3f} s, end->file {tail:.3f} s, "
              f"size {s / 1024:.0f} KiB, lost {l:.0f}, events {e:.0f}")
    r, d = med["rust"], med["debian"]
    print(f"ratio rust/debian ({kind}): size {ratio(r[3], d[3]):.3f}x (goal <= 1.0), "
          f"cpu {ratio(r[1], d[1]):.3f}x (goal <= 0.8), "
          f"end->file {ratio(r[2], d[2]):.3f}x (goal <= 0.3), "
          f"bytes per event {ratio(r[3] / max(r[5], 1), d[3] / max(d[5], 1)):.3f}x; "
          f"lost rust {sum(x[4] for x in rows['rust'])}, "
          f"debian {sum(x[4] for x in rows['debian'])}")
    print()


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0,
                    help="run each workload for this long instead of a fixed amount of work")
    ap.add_argument("--sched-trips", type=int, default=110000,
                    help="round trips of the sched workload (default: %(default)s)")
    ap.add_argument("--markers", type=int, default=14000000,
                    help="markers the markers workload writes (default: %(default)s)")
    ap.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--workloads", default="sched,markers",
                    help="comma-separated: sched, markers (default: %(default)s)")
    ap.add_argument("--rust", default=os.path.join(here, "../../target/release/trace-cmd"))
    ap.add_argument("--sandbox", default=SANDBOX,
                    help="ftrace-sandbox that Debian's trace-cmd runs in (default: %(default)s)")
    ap.add_argument("--workload", choices=list(EVENTS), help=argparse.SUPPRESS)
    ap.add_argument("--end-file", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.workload:
        workload(a.workload, a.seconds, a.count, a.end_file)
        return
    kinds = [k for k in a.workloads.split(",") if k]
    for k in kinds:
        if k not in EVENTS:
            sys.exit(f"unknown workload {k!r}: sched or markers")
    require(a.rust, DEBIAN, a.sandbox)
    a.found = snapshot()
    try:
        with tempfile.TemporaryDirectory(prefix="record-bench-") as tmp:
            for k in kinds:
                bench(a, k, tmp)
    finally:
        restore(a.found)


if __name__ == "__main__":
    main()
