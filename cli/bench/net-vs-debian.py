#!/usr/bin/env python3
"""Benchmark: network recording over loopback, the Rust pair (our `record -N` into
our `listen`) against the Debian pair (Debian 3.1.6 `record -N`, inside
ftrace-sandbox, into Debian `listen`), alternated A/B on the same event load.

Load: one marker writer per CPU (pinned) writes 48-byte markers to trace_marker at
a target total rate for --seconds, ramped from light to "max" (no pacing: the most
this machine generates). Each run starts a fresh listener, records `sleep`, starts
the writers once the client is up, then waits for the listener's final file.

Per run it prints: markers written, MB/s of trace data in the final file (CPU data
bytes from `trace-cmd dump --flyrecord`, over the load time), CPU seconds per GiB of
that data for the client and the listener (wait4 rusage of each process tree; the
writers are not counted), the kernel's overrun + dropped count (per_cpu stats right
after the client ends; shown for information) and the markers lost: written minus
found by `trace-cmd report`. That one number covers kernel overruns and pages lost
on the way alike, so each lost marker is counted once.

Each step runs --rounds times, the pair order flipping every run (A/B, B/A, ...).
Per transport the summary gives, per step, the medians over the rounds (CPU s/GiB
of both sides, MB/s), the Rust/Debian ratio of those medians, and the markers lost
summed over the rounds; then each pair's lossless ceiling: the highest rate up to
which every step of that pair lost nothing.

--ramp replaces --rates by 300000, 400000, ... (--ramp-start, --ramp-step): the ramp
goes on while some pair is still lossless and the paced writers reach the target
rate, then ends with `max`. The ceiling is printed as a number of markers/s (`max`
lossless: the median rate the unpaced writers reached).

usage: net-vs-debian.py [--seconds S] [--rates 10000,100000,max] [--transports tcp,udp]
                        [--rounds N] [--ramp [--ramp-start R] [--ramp-step R]]
Needs root. Not a test: numbers are printed, never asserted. The top-level buffer is
used (as trace-cmd does); its settings are restored at the end.
"""
import argparse
import fcntl
import os
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topstate import DEBIAN, SANDBOX, require, restore, snapshot, tr_read, tr_write  # noqa: E402

GIB = 1 << 30
BUFFER_KB = "4096"

WRITER_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
/* writer CPU RATE SECONDS: RATE markers/s (0 = as fast as possible) on CPU. */
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    int cpu = atoi(argv[1]); double rate = atof(argv[2]), secs = atof(argv[3]);
    cpu_set_t set; CPU_ZERO(&set); CPU_SET(cpu, &set); sched_setaffinity(0, sizeof set, &set);
    int fd = open("/sys/kernel/tracing/trace_marker", O_WRONLY);
    if (fd < 0) { perror("trace_marker"); return 1; }
    char msg[49]; long n = 0; double start = now(), end = start + secs;
    for (;;) {
        double t = now();
        if (t >= end) break;
        long due = rate > 0 ? (long)((t - start) * rate) + 1 : n + 256;
        if (n >= due) { usleep(200); continue; }
        while (n < due) {
            snprintf(msg, sizeof msg, "netbench-%02d-%036ld", cpu, n);
            if (write(fd, msg, 48) == 48) n++; else break;
        }
    }
    printf("%ld\n", n);
    return 0;
}
"""


def kernel_lost(cpus):
    lost = 0
    for c in range(cpus):
        st = tr_read(f"per_cpu/cpu{c}/stats")
        lost += sum(int(n) for n in re.findall(r"^(?:overrun|dropped events): (\d+)", st, re.M))
    return lost


def free_port():
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::", 0))
        return s.getsockname()[1]


def port_taken(port):
    for fam, addr in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        with socket.socket(fam) as s:
            try:
                s.bind((addr, port))
            except OSError:
                return True
    return False


def cpu_of(ru):
    return ru.ru_utime + ru.ru_stime


def cpu_data_bytes(path):
    """Bytes of ring-buffer pages in a finished trace.dat (v6, or v7 with its zstd
    chunks counted uncompressed); None while the file is not complete."""
    dump = subprocess.run([DEBIAN, "dump", "--flyrecord", "-i", path],
                          capture_output=True, text=True)
    if dump.returncode != 0:
        return None
    v6 = re.findall(r"(\d+)\s+\[offset, size of cpu", dump.stdout)
    if v6:
        return sum(int(n) for n in v6)
    opts = subprocess.run([DEBIAN, "dump", "--options", "-i", path],
                          capture_output=True, text=True).stdout
    spans = re.findall(r"^\s*\d+ (\d+)\s+(\d+)\s+\[id, data offset and size\]", opts, re.M)
    if not spans:
        return None
    compressed = re.search(r'"buffer flyrecord ", flags 0x1', dump.stdout + opts) is not None
    if not compressed:
        return sum(int(size) for _, size in set(spans))
    total = 0
    with open(path, "rb") as f:
        for off, size in set(spans):
            if int(size) == 0:
                continue
            f.seek(int(off))
            (count,) = struct.unpack("<I", f.read(4))
            for _ in range(count):
                csize, usize = struct.unpack("<II", f.read(8))
                total += usize
                f.seek(csize, 1)
    return total


def final_file(d, within=30):
    end = time.monotonic() + within
    while time.monotonic() < end:
        names = os.listdir(d)
        dats = [n for n in names if n.endswith(".dat")]
        if len(dats) == 1 and not any(".cpu" in n for n in names):
            path = os.path.join(d, dats[0])
            data = cpu_data_bytes(path)
            if data is not None:
                return path, data
        time.sleep(0.1)
    return None, 0


def markers_in(path):
    p = subprocess.Popen([DEBIAN, "report", "-i", path], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    n = sum(1 for line in p.stdout if "netbench-" in line)
    p.wait()
    return n


def one_run(pair, transport, rate, a, writer, cpus, tmp):
    d = tempfile.mkdtemp(dir=tmp)
    port = free_port()
    listen_prog = a.rust if pair == "rust" else DEBIAN
    listener = subprocess.Popen([listen_prog, "listen", "-p", str(port), "-d", d],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not port_taken(port):
        time.sleep(0.02)
    rec = ["record", "-N", f"127.0.0.1:{port}", "-b", BUFFER_KB,
           "-e", "sched:sched_process_exit", "-q"]
    if transport == "tcp":
        rec.append("-t")
    if pair == "rust":
        client_cmd = [a.rust] + rec + ["sleep", "600"]
    else:
        client_cmd = [a.sandbox, DEBIAN] + rec + ["sleep", "600"]
    # Both clients switch tracing on once their recorders run: start the load then.
    tr_write("tracing_on", "0")
    client = subprocess.Popen(client_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    end = time.monotonic() + 30
    while tr_read("tracing_on").strip() != "1":
        if client.poll() is not None or time.monotonic() > end:
            break
        time.sleep(0.005)
    time.sleep(0.2)
    per_cpu = 0 if rate == "max" else int(rate) / cpus
    writers = [subprocess.Popen([writer, str(c), str(per_cpu), str(a.seconds)],
                                stdout=subprocess.PIPE, text=True) for c in range(cpus)]
    written = sum(int(w.communicate()[0].strip() or 0) for w in writers)
    time.sleep(0.3)
    try:
        os.killpg(client.pid, signal.SIGINT)  # Ctrl-C: stop, flush, close
    except ProcessLookupError:
        pass
    _, status, cru = os.wait4(client.pid, 0)
    err = client.stderr.read().decode(errors="replace")
    client.stderr.close()
    klost = kernel_lost(cpus)
    path, data = final_file(d)
    listener.send_signal(signal.SIGINT)
    try:
        _, _, lru = os.wait4(listener.pid, 0)
    except ChildProcessError:
        lru = None
    if path is None:
        print(f"  {pair} {transport} {rate}: no file (client exit "
              f"{os.waitstatus_to_exitcode(status)}): {err.strip()[:300]}")
        return None
    found = markers_in(path)
    subprocess.run(["rm", "-rf", d])
    gib = data / GIB if data else float("nan")
    return {
        "written": written, "found": found, "klost": klost,
        "lost": max(written - found, 0), "mbps": data / a.seconds / 1e6,
        "client_cpu": cpu_of(cru), "listener_cpu": cpu_of(lru) if lru else float("nan"),
        "client_s_gib": cpu_of(cru) / gib,
        "listener_s_gib": (cpu_of(lru) / gib) if lru else float("nan"),
    }


def median(runs, f):
    return statistics.median(f(r) for r in runs)


def both_sides(r):
    return r["client_s_gib"] + r["listener_s_gib"]


def achieved(runs, a):
    """Median markers/s the writers reached."""
    return median(runs, lambda r: r["written"] / a.seconds)


def run_step(transport, rate, a, writer, cpus, tmp, found, results, turn):
    """Runs one step --rounds times, the pair order flipping every run. Returns the
    next turn."""
    for _ in range(a.rounds):
        order = ["rust", "debian"] if turn % 2 == 0 else ["debian", "rust"]
        turn += 1
        for pair in order:
            r = one_run(pair, transport, rate, a, writer, cpus, tmp)
            restore(found)
            if r is None:
                results.setdefault((transport, rate, pair), []).append(None)
                continue
            results.setdefault((transport, rate, pair), []).append(r)
            print(f"{transport:>9} {rate:>8} {pair:>6} {r['written']:>9} "
                  f"{r['found']:>9} {r['klost']:>7} {r['lost']:>8} "
                  f"{r['mbps']:>7.2f} {r['client_s_gib']:>9.2f} "
                  f"{r['listener_s_gib']:>9.2f}", flush=True)
    return turn


def step_ok(results, transport, rate, pair):
    """The runs of a step that produced a file, and whether every run of it
    produced one and lost nothing."""
    runs = results.get((transport, rate, pair), [])
    done = [r for r in runs if r is not None]
    lossless = bool(runs) and len(done) == len(runs) and all(r["lost"] == 0 for r in done)
    return done, lossless


def ramp_rates(transport, a, writer, cpus, tmp, found, results, turn):
    """300k, 400k, ... while some pair is still lossless and the paced writers
    reach the target, then max. Returns the rates run and the next turn."""
    rates = []
    lost = {"rust": False, "debian": False}
    rate = a.ramp_start
    while True:
        rates.append(str(rate))
        turn = run_step(transport, str(rate), a, writer, cpus, tmp, found, results, turn)
        short = True
        for pair in lost:
            done, ok = step_ok(results, transport, str(rate), pair)
            lost[pair] = lost[pair] or not ok
            if done and achieved(done, a) >= 0.95 * rate:
                short = False
        if all(lost.values()) or short:
            break
        rate += a.ramp_step
    rates.append("max")
    turn = run_step(transport, "max", a, writer, cpus, tmp, found, results, turn)
    return rates, turn


def ceiling(results, transport, rates, pair, a):
    """Highest rate up to which every step of the pair lost nothing, as markers/s
    (for `max`, or a target the writers did not reach: the median rate they
    reached)."""
    best = None
    for rate in rates:
        done, ok = step_ok(results, transport, rate, pair)
        if not ok:
            break
        # A target the writers fell short of counts as the rate they reached.
        reached = achieved(done, a)
        best = int(reached) if rate == "max" or reached < 0.95 * int(rate) else int(rate)
    return best


def summary(results, transport, rates, a):
    ceil = {p: ceiling(results, transport, rates, p, a) for p in ("rust", "debian")}
    shown = {}
    for p, c in ceil.items():
        at_max = rates[-1] == "max" and step_ok(results, transport, "max", p)[1]
        shown[p] = "none" if c is None else f"{c}" + (" (max)" if at_max else "")
    print(f"{transport}: lossless ceiling (markers/s): rust {shown['rust']}, "
          f"debian {shown['debian']}")
    for rate in rates:
        r, _ = step_ok(results, transport, rate, "rust")
        d, _ = step_ok(results, transport, rate, "debian")
        if not r or not d:
            continue
        rc, dc = median(r, both_sides), median(d, both_sides)
        print(f"  {rate:>8}: median CPU s/GiB both sides rust {rc:.2f} / debian {dc:.2f} = "
              f"{rc / dc if dc else float('nan'):.2f}x (client {median(r, lambda x: x['client_s_gib']):.2f}"
              f" / {median(d, lambda x: x['client_s_gib']):.2f}, listener "
              f"{median(r, lambda x: x['listener_s_gib']):.2f} / "
              f"{median(d, lambda x: x['listener_s_gib']):.2f}); MB/s "
              f"{median(r, lambda x: x['mbps']):.2f} / {median(d, lambda x: x['mbps']):.2f}; "
              f"markers lost in {len(r)}/{len(d)} runs rust {sum(x['lost'] for x in r)}, "
              f"debian {sum(x['lost'] for x in d)}")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--rates", default="20000,100000,300000,max")
    ap.add_argument("--transports", default="tcp,udp")
    ap.add_argument("--rounds", type=int, default=1,
                    help="runs per step and pair, order alternating (default %(default)s)")
    ap.add_argument("--ramp", action="store_true",
                    help="ramp the rate up to find each pair's lossless ceiling "
                         "(replaces --rates)")
    ap.add_argument("--ramp-start", type=int, default=300000)
    ap.add_argument("--ramp-step", type=int, default=100000)
    ap.add_argument("--rust", default=os.path.join(here, "../../target/release/trace-cmd"))
    ap.add_argument("--sandbox", default=SANDBOX,
                    help="ftrace-sandbox that Debian's trace-cmd runs in (default: %(default)s)")
    a = ap.parse_args()
    if a.rounds < 1 or a.ramp_start < 1 or a.ramp_step < 1:
        sys.exit("--rounds, --ramp-start and --ramp-step must be at least 1")
    require(a.rust, DEBIAN, a.sandbox)
    cpus = os.cpu_count()
    # The lock the tests that record on the top-level buffer take.
    lock = open("/tmp/tracecmd-rs-top-buffer.lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    found = snapshot()
    results = {}
    rates_run = {}
    try:
        with tempfile.TemporaryDirectory(prefix="net-bench-") as tmp:
            writer = os.path.join(tmp, "writer")
            src = writer + ".c"
            with open(src, "w") as f:
                f.write(WRITER_C)
            subprocess.run(["cc", "-O2", "-o", writer, src], check=True)
            hdr = (f"{'transport':>9} {'rate/s':>8} {'pair':>6} {'written':>9} {'in file':>9} "
                   f"{'k.lost':>7} {'lost':>8} {'MB/s':>7} {'cli s/GiB':>9} {'lis s/GiB':>9}")
            print(hdr)
            turn = 0
            for transport in a.transports.split(","):
                if a.ramp:
                    rates_run[transport], turn = ramp_rates(transport, a, writer, cpus, tmp,
                                                            found, results, turn)
                    continue
                rates_run[transport] = a.rates.split(",")
                for rate in rates_run[transport]:
                    turn = run_step(transport, rate, a, writer, cpus, tmp, found, results, turn)
    finally:
        restore(found)
    print()
    for transport, rates in rates_run.items():
        summary(results, transport, rates, a)


if __name__ == "__main__":
    main()
