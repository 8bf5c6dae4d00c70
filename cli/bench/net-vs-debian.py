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
found in the final file. That one number covers kernel overruns and pages lost
on the way alike, so each lost marker is counted once. The markers are counted
with libtracecmd (Debian's reader; a compressed file first unpacked by Debian's
`trace-cmd convert`), which is exact and many times faster than formatting every
event with `trace-cmd report`; the first file of each pair and transport is also
counted by `report` and the bench stops if the two differ (--count report: report
for every file). Each run's wall time is printed (`run s`), the bench's at the end.

Each step runs --rounds times, the pair order flipping every run (A/B, B/A, ...).
Per transport the summary gives, per step, the medians over the rounds (CPU s/GiB
of both sides, MB/s), the Rust/Debian ratio of those medians, and the markers lost
summed over the rounds; then each pair's lossless ceiling: the highest rate up to
which every step of that pair lost nothing.

--ramp replaces --rates by 300000, 400000, ... (--ramp-start, --ramp-step): the ramp
goes on while some pair is still lossless and the paced writers reach the target
rate, then ends with `max`. --ramp-search bisect instead doubles from --ramp-start
while some pair is lossless, then bisects each pair's ceiling down to --ramp-step
(fewer steps for the same resolution). The ceiling is printed as a number of
markers/s (`max` lossless: the median rate the unpaced writers reached).

usage: net-vs-debian.py [--seconds S] [--rates 10000,100000,max] [--transports tcp,udp]
                        [--rounds N] [--ramp [--ramp-start R] [--ramp-step R]
                        [--ramp-search linear|bisect]] [--count lib|report]
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

# Every marker begins so (the writer's format above).
MARKER = "netbench-"

COUNTER_C = r"""
#include <stdio.h>
#include <string.h>
#include <trace-cmd.h>
/* counter FILE PREFIX: the ftrace/print events whose text begins with PREFIX, read
 * CPU by CPU with libtracecmd, the reader of Debian's `trace-cmd report`. */
int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: counter FILE PREFIX\n"); return 2; }
    struct tracecmd_input *h = tracecmd_open(argv[1], 0);
    if (!h) { fprintf(stderr, "%s: not a trace file libtracecmd can open\n", argv[1]); return 1; }
    struct tep_handle *tep = tracecmd_get_tep(h);
    struct tep_event *ev = tep_find_event_by_name(tep, "ftrace", "print");
    struct tep_format_field *buf = ev ? tep_find_field(ev, "buf") : NULL;
    if (!buf) { fprintf(stderr, "%s: no ftrace/print event format\n", argv[1]); return 1; }
    int plen = (int)strlen(argv[2]);
    long n = 0;
    for (int cpu = 0; cpu < tep_get_cpus(tep); cpu++) {
        for (struct tep_record *r = tracecmd_read_cpu_first(h, cpu); r;
             r = tracecmd_read_data(h, cpu)) {
            if (tep_data_type(tep, r) == ev->id && r->size >= buf->offset + plen &&
                memcmp((char *)r->data + buf->offset, argv[2], plen) == 0)
                n++;
            tracecmd_free_record(r);
        }
    }
    tracecmd_close(h);
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
    chunks counted uncompressed) and whether they are compressed; None while the
    file is not complete."""
    dump = subprocess.run([DEBIAN, "dump", "--flyrecord", "-i", path],
                          capture_output=True, text=True)
    if dump.returncode != 0:
        return None
    v6 = re.findall(r"(\d+)\s+\[offset, size of cpu", dump.stdout)
    if v6:
        return sum(int(n) for n in v6), False
    opts = subprocess.run([DEBIAN, "dump", "--options", "-i", path],
                          capture_output=True, text=True).stdout
    spans = re.findall(r"^\s*\d+ (\d+)\s+(\d+)\s+\[id, data offset and size\]", opts, re.M)
    if not spans:
        return None
    compressed = re.search(r'"buffer flyrecord ", flags 0x1', dump.stdout + opts) is not None
    if not compressed:
        return sum(int(size) for _, size in set(spans)), False
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
    return total, True


def final_file(d, within=30):
    end = time.monotonic() + within
    while time.monotonic() < end:
        names = os.listdir(d)
        dats = [n for n in names if n.endswith(".dat")]
        if len(dats) == 1 and not any(".cpu" in n for n in names):
            path = os.path.join(d, dats[0])
            info = cpu_data_bytes(path)
            if info is not None:
                return path, info
        time.sleep(0.1)
    return None, (0, False)


def markers_by_report(path):
    """Markers in the file as Debian's `trace-cmd report` prints them (the slow,
    reference count: formatting millions of lines takes most of a step's time)."""
    report = subprocess.Popen([DEBIAN, "report", "-i", path], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    grep = subprocess.run(["grep", "-cF", MARKER], stdin=report.stdout,
                          capture_output=True, text=True)
    report.stdout.close()
    report.wait()
    return int(grep.stdout.strip() or 0)


def markers_by_lib(path, compressed, counter, tmp):
    """Markers in the file, read CPU by CPU with libtracecmd (the reader behind
    Debian's `report`) without formatting. A compressed file is first unpacked by
    Debian's `trace-cmd convert`: libtracecmd 3.1.6 reads zstd chunks of a big file
    many times slower than a plain v6 file."""
    src = path
    if compressed:
        src = os.path.join(tmp, "unpacked.dat")
        conv = subprocess.run([DEBIAN, "convert", "-i", path, "-o", src, "--compression",
                               "none", "--file-version", "6"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if conv.returncode != 0:
            print(f"  convert failed ({conv.stderr.strip()[:200]}); counting the "
                  "compressed file", flush=True)
            src = path
    try:
        out = subprocess.run([counter, src, MARKER], capture_output=True, text=True)
    finally:
        if src != path and os.path.exists(src):
            os.unlink(src)
    if out.returncode != 0:
        sys.exit(f"marker counter failed on {path}: {out.stderr.strip()}")
    return int(out.stdout)


def markers_in(path, compressed, a, counter, tmp, checked):
    """The markers found in the file. With --count lib, the first file of each pair
    and transport is also counted by `report` and a difference stops the bench."""
    if a.count == "report":
        return markers_by_report(path)
    n = markers_by_lib(path, compressed, counter, tmp)
    if checked is not None:
        ref = markers_by_report(path)
        if ref != n:
            sys.exit(f"{path}: the library count {n} differs from report's {ref}; "
                     "rerun with --count report")
        print(f"  (count checked against report on {checked}: {n} both)", flush=True)
    return n


def one_run(pair, transport, rate, a, tools, cpus, tmp, checked):
    began = time.monotonic()
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
    writers = [subprocess.Popen([tools["writer"], str(c), str(per_cpu), str(a.seconds)],
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
    path, (data, compressed) = final_file(d)
    listener.send_signal(signal.SIGINT)
    try:
        _, _, lru = os.wait4(listener.pid, 0)
    except ChildProcessError:
        lru = None
    if path is None:
        print(f"  {pair} {transport} {rate}: no file (client exit "
              f"{os.waitstatus_to_exitcode(status)}): {err.strip()[:300]}")
        return None
    found = markers_in(path, compressed, a, tools["counter"], tmp,
                       None if checked else f"{pair} {transport} {rate}")
    subprocess.run(["rm", "-rf", d])
    gib = data / GIB if data else float("nan")
    return {
        "written": written, "found": found, "klost": klost,
        "lost": max(written - found, 0), "mbps": data / a.seconds / 1e6,
        "client_cpu": cpu_of(cru), "listener_cpu": cpu_of(lru) if lru else float("nan"),
        "client_s_gib": cpu_of(cru) / gib,
        "listener_s_gib": (cpu_of(lru) / gib) if lru else float("nan"),
        "secs": time.monotonic() - began,
    }


def median(runs, f):
    return statistics.median(f(r) for r in runs)


def both_sides(r):
    return r["client_s_gib"] + r["listener_s_gib"]


def achieved(runs, a):
    """Median markers/s the writers reached."""
    return median(runs, lambda r: r["written"] / a.seconds)


class Bench:
    """What every run needs: the options, the built tools, the tracefs state to
    restore, the results so far and whose turn it is to go first."""

    def __init__(self, a, tools, cpus, tmp, found):
        self.a, self.tools, self.cpus, self.tmp, self.found = a, tools, cpus, tmp, found
        self.results = {}
        self.turn = 0
        # (pair, transport) whose count was checked against report.
        self.checked = set()

    def step(self, transport, rate):
        """Runs one step --rounds times, the pair order flipping every run."""
        for _ in range(self.a.rounds):
            order = ["rust", "debian"] if self.turn % 2 == 0 else ["debian", "rust"]
            self.turn += 1
            for pair in order:
                checked = (pair, transport) in self.checked
                r = one_run(pair, transport, rate, self.a, self.tools, self.cpus, self.tmp,
                            checked)
                restore(self.found)
                self.results.setdefault((transport, rate, pair), []).append(r)
                if r is None:
                    continue
                self.checked.add((pair, transport))
                print(f"{transport:>9} {rate:>8} {pair:>6} {r['written']:>9} "
                      f"{r['found']:>9} {r['klost']:>7} {r['lost']:>8} "
                      f"{r['mbps']:>7.2f} {r['client_s_gib']:>9.2f} "
                      f"{r['listener_s_gib']:>9.2f} {r['secs']:>6.1f}", flush=True)

    def ok(self, transport, rate, pair):
        return step_ok(self.results, transport, str(rate), pair)

    def reached(self, transport, rate):
        """Whether the paced writers reached 95% of `rate` in some pair's runs."""
        for pair in PAIRS:
            done, _ = self.ok(transport, rate, pair)
            if done and achieved(done, self.a) >= 0.95 * rate:
                return True
        return False


PAIRS = ("rust", "debian")


def step_ok(results, transport, rate, pair):
    """The runs of a step that produced a file, and whether every run of it
    produced one and lost nothing."""
    runs = results.get((transport, rate, pair), [])
    done = [r for r in runs if r is not None]
    lossless = bool(runs) and len(done) == len(runs) and all(r["lost"] == 0 for r in done)
    return done, lossless


def ramp_linear(b, transport):
    """start, start + step, ... while some pair is still lossless and the paced
    writers reach the target, then max. Returns the rates run."""
    a = b.a
    lost = {p: False for p in PAIRS}
    rate = a.ramp_start
    rates = []
    while True:
        rates.append(str(rate))
        b.step(transport, str(rate))
        for pair in PAIRS:
            lost[pair] = lost[pair] or not b.ok(transport, rate, pair)[1]
        if all(lost.values()) or not b.reached(transport, rate):
            break
        rate += a.ramp_step
    b.step(transport, "max")
    return rates + ["max"]


def ramp_bisect(b, transport):
    """start, 2 x start, 4 x start, ... while some pair is still lossless and the
    writers reach the target; then, per pair, bisects between its highest lossless
    and its lowest lossy rate down to --ramp-step (rates on the --ramp-step grid,
    both pairs run at each); then max. Returns the rates run."""
    a = b.a
    lo = {p: None for p in PAIRS}  # highest rate with every lower step lossless
    hi = {p: None for p in PAIRS}  # lowest lossy rate
    ran = []

    def run(rate):
        if str(rate) not in ran:
            ran.append(str(rate))
            b.step(transport, str(rate))

    rate = a.ramp_start
    while True:
        run(rate)
        for p in PAIRS:
            if hi[p] is None:
                if b.ok(transport, rate, p)[1]:
                    lo[p] = rate
                else:
                    hi[p] = rate
        if all(h is not None for h in hi.values()) or not b.reached(transport, rate):
            break
        rate *= 2
    for p in PAIRS:
        while lo[p] is not None and hi[p] is not None and hi[p] - lo[p] > a.ramp_step:
            mid = lo[p] + max(1, (hi[p] - lo[p]) // a.ramp_step // 2) * a.ramp_step
            run(mid)
            if b.ok(transport, mid, p)[1] and b.reached(transport, mid):
                lo[p] = mid
            else:
                hi[p] = mid
    b.step(transport, "max")
    numeric = sorted(int(r) for r in ran)
    return [str(r) for r in numeric] + ["max"]


def ceiling(results, transport, rates, pair, a):
    """Highest rate of the steps up to which every step of the pair lost nothing,
    as markers/s (for `max`, or a target the writers did not reach: the median
    rate they reached). `rates` are in increasing order, `max` last."""
    best = None
    for rate in rates:
        done, ok = step_ok(results, transport, rate, pair)
        if not ok:
            break
        # A target the writers fell short of counts as the rate they reached.
        reached = achieved(done, a)
        got = int(reached) if rate == "max" or reached < 0.95 * int(rate) else int(rate)
        # Unpaced writers can reach less than a paced step did (they contend more).
        best = got if best is None else max(best, got)
    return best


def summary(results, transport, rates, a):
    ceil = {p: ceiling(results, transport, rates, p, a) for p in PAIRS}
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


def build_tools(tmp):
    """Compiles the marker writer and the marker counter (libtracecmd-dev)."""
    tools = {}
    for name, src, libs in (("writer", WRITER_C, ""), ("counter", COUNTER_C, "libtracecmd")):
        path = os.path.join(tmp, name)
        with open(path + ".c", "w") as f:
            f.write(src)
        flags = []
        if libs:
            pc = subprocess.run(["pkg-config", "--cflags", "--libs", libs],
                                capture_output=True, text=True)
            if pc.returncode != 0:
                return None
            flags = pc.stdout.split() + ["-ltraceevent"]
        cc = subprocess.run(["cc", "-O2", "-o", path, path + ".c"] + flags,
                            capture_output=True, text=True)
        if cc.returncode != 0:
            if libs:
                print(cc.stderr, file=sys.stderr)
                return None
            sys.exit(f"compiling the {name} failed:\n{cc.stderr}")
        tools[name] = path
    return tools


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
    ap.add_argument("--ramp-search", choices=("linear", "bisect"), default="linear",
                    help="linear: start, start+step, ...; bisect: doubling from start, "
                         "then bisection down to --ramp-step (default %(default)s)")
    ap.add_argument("--count", choices=("lib", "report"), default="lib",
                    help="how markers in the final file are counted: lib (libtracecmd, "
                         "checked against report on the first file of each pair and "
                         "transport) or report on every file (default %(default)s)")
    ap.add_argument("--rust", default=os.path.join(here, "../../target/release/trace-cmd"))
    ap.add_argument("--sandbox", default=SANDBOX,
                    help="ftrace-sandbox that Debian's trace-cmd runs in (default: %(default)s)")
    a = ap.parse_args()
    if a.rounds < 1 or a.ramp_start < 1 or a.ramp_step < 1:
        sys.exit("--rounds, --ramp-start and --ramp-step must be at least 1")
    require(a.rust, DEBIAN, a.sandbox)
    # Started from a shell's background job, SIGINT is ignored and the clients
    # (and the `sleep` they record) would inherit that and never stop on Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cpus = os.cpu_count()
    started = time.monotonic()
    # The lock the tests that record on the top-level buffer take.
    lock = open("/tmp/tracecmd-rs-top-buffer.lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    found = snapshot()
    rates_run = {}
    try:
        with tempfile.TemporaryDirectory(prefix="net-bench-") as tmp:
            tools = build_tools(tmp)
            if tools is None:
                sys.exit("building the marker counter needs libtracecmd-dev (and "
                         "pkg-config); or count with report: --count report")
            b = Bench(a, tools, cpus, tmp, found)
            hdr = (f"{'transport':>9} {'rate/s':>8} {'pair':>6} {'written':>9} {'in file':>9} "
                   f"{'k.lost':>7} {'lost':>8} {'MB/s':>7} {'cli s/GiB':>9} {'lis s/GiB':>9} "
                   f"{'run s':>6}")
            print(hdr)
            for transport in a.transports.split(","):
                if a.ramp:
                    ramp = ramp_bisect if a.ramp_search == "bisect" else ramp_linear
                    rates_run[transport] = ramp(b, transport)
                    continue
                rates_run[transport] = a.rates.split(",")
                for rate in rates_run[transport]:
                    b.step(transport, rate)
    finally:
        restore(found)
    print()
    for transport, rates in rates_run.items():
        summary(b.results, transport, rates, a)
    print(f"bench time: {(time.monotonic() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
