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
writers are not counted), and events lost: kernel overrun + dropped (per_cpu stats
right after the client ends) and markers missing from the file (written minus found
by `trace-cmd report`, which also covers pages lost on the way). Then per transport
the Rust/Debian ratios and the highest lossless rate of each pair.

usage: net-vs-debian.py [--seconds S] [--rates 10000,100000,max] [--transports tcp,udp]
Needs root. Not a test: numbers are printed, never asserted. The top-level buffer is
used (as trace-cmd does); its settings are restored at the end.
"""
import argparse
import fcntl
import os
import re
import signal
import socket
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
        "missing": max(written - found, 0), "mbps": data / a.seconds / 1e6,
        "client_cpu": cpu_of(cru), "listener_cpu": cpu_of(lru) if lru else float("nan"),
        "client_s_gib": cpu_of(cru) / gib,
        "listener_s_gib": (cpu_of(lru) / gib) if lru else float("nan"),
    }


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--rates", default="20000,100000,300000,max")
    ap.add_argument("--transports", default="tcp,udp")
    ap.add_argument("--rust", default=os.path.join(here, "../../target/release/trace-cmd"))
    ap.add_argument("--sandbox", default=SANDBOX,
                    help="ftrace-sandbox that Debian's trace-cmd runs in (default: %(default)s)")
    a = ap.parse_args()
    require(a.rust, DEBIAN, a.sandbox)
    cpus = os.cpu_count()
    # The lock the tests that record on the top-level buffer take.
    lock = open("/tmp/tracecmd-rs-top-buffer.lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    found = snapshot()
    results = {}
    try:
        with tempfile.TemporaryDirectory(prefix="net-bench-") as tmp:
            writer = os.path.join(tmp, "writer")
            src = writer + ".c"
            with open(src, "w") as f:
                f.write(WRITER_C)
            subprocess.run(["cc", "-O2", "-o", writer, src], check=True)
            hdr = (f"{'transport':>9} {'rate/s':>8} {'pair':>6} {'written':>9} {'in file':>9} "
                   f"{'k.lost':>7} {'missing':>8} {'MB/s':>7} {'cli s/GiB':>9} {'lis s/GiB':>9}")
            print(hdr)
            i = 0
            for transport in a.transports.split(","):
                for rate in a.rates.split(","):
                    order = ["rust", "debian"] if i % 2 == 0 else ["debian", "rust"]
                    i += 1
                    for pair in order:
                        r = one_run(pair, transport, rate, a, writer, cpus, tmp)
                        restore(found)
                        if r is None:
                            continue
                        results[(transport, rate, pair)] = r
                        print(f"{transport:>9} {rate:>8} {pair:>6} {r['written']:>9} "
                              f"{r['found']:>9} {r['klost']:>7} {r['missing']:>8} "
                              f"{r['mbps']:>7.2f} {r['client_s_gib']:>9.2f} "
                              f"{r['listener_s_gib']:>9.2f}", flush=True)
    finally:
        restore(found)
    print()
    for transport in a.transports.split(","):
        best = {}
        for pair in ("rust", "debian"):
            ok = [rate for rate in a.rates.split(",")
                  if (transport, rate, pair) in results
                  and results[(transport, rate, pair)]["missing"] == 0
                  and results[(transport, rate, pair)]["klost"] == 0]
            best[pair] = ok[-1] if ok else "none"
        print(f"{transport}: highest lossless rate: rust {best['rust']}, debian {best['debian']}")
        for rate in a.rates.split(","):
            r, d = results.get((transport, rate, "rust")), results.get((transport, rate, "debian"))
            if not r or not d:
                continue
            rc = r["client_s_gib"] + r["listener_s_gib"]
            dc = d["client_s_gib"] + d["listener_s_gib"]
            print(f"  {rate:>8}: CPU s/GiB both sides rust {rc:.2f} / debian {dc:.2f} = "
                  f"{rc / dc if dc else float('nan'):.2f}x; MB/s {r['mbps']:.2f} / "
                  f"{d['mbps']:.2f}; lost (kernel+missing) rust {r['klost'] + r['missing']}, "
                  f"debian {d['klost'] + d['missing']}")


if __name__ == "__main__":
    main()
