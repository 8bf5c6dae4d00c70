#!/usr/bin/env python3
"""Benchmark (issue 18): one listener and a fleet of clients released at once.

A real session is captured first: our `record -N --proto 1 -t -e sched sleep 1`
into our listener (or --capture FILE, a v6 file our listener built). Then, per
run and per listener (ours: `trace-cmd listen -p`, Debian's 3.1.6: `trace-cmd
listen -p`), a fresh listener gets N replayed clients (the project's replay
client, target/release/examples/listen_replay; half V1, half V3 by default),
all released together.

Per run it prints: clients that completed (the replay client's view), files
whose `trace-cmd report` shows exactly the captured event count, wall time from
the release until the last file is finished, peak RSS summed over the
listener's process tree, its CPU seconds (user + system, children included),
and the peak threads and open fds over the tree (sampled every 50 ms), and the
slowest completed client (against --replay-timeout). A client that fails is
counted (with its error), for either listener.

Clients and listener share this machine, so our listener runs with a long
--timeout (--listen-timeout); every connect, answer and send of a replayed
client is bounded by --replay-timeout, so no run waits on a hung client.

usage: listen-fleet.py [--clients 1024] [--runs 3] [--mode mixed|v1|v3]
                       [--listeners ours,debian] [--capture FILE]
                       [--listen-timeout 60] [--replay-timeout 60]
Build first: cargo build --release -p trace-cmd && cargo build --release --example listen_replay
Needs root. Not a test: numbers are printed, never asserted.
"""
import argparse
import concurrent.futures
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from topstate import DEBIAN, require, restore, snapshot  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OURS = os.path.join(REPO, "target", "release", "trace-cmd")
REPLAY = os.path.join(REPO, "target", "release", "examples", "listen_replay")
TOP_LOCK = "/tmp/tracecmd-rs-top-buffer.lock"
EVENT = re.compile(r"\[\d+\]\s+\d+\.\d+:")
CLK = os.sysconf("SC_CLK_TCK")
SETTLE = 15  # s without a change in the output directory that ends a run's wait


def free_port():
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::", 0))
        return s.getsockname()[1]


def wait_port(port, within=10):
    end = time.time() + within
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"no listener on port {port}")


def events(path):
    out = subprocess.run([DEBIAN, "report", "-i", path], capture_output=True, text=True)
    if out.returncode != 0:
        return -1
    return sum(1 for line in out.stdout.splitlines() if EVENT.search(line))


def capture(workdir):
    """Our record -N --proto 1 -t into our listener; returns the file."""
    d = os.path.join(workdir, "capture")
    os.mkdir(d)
    port = free_port()
    lst = subprocess.Popen([OURS, "listen", "-p", str(port), "-d", d], stderr=subprocess.DEVNULL)
    wait_port(port)
    with open(TOP_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        saved = snapshot()
        try:
            subprocess.run([OURS, "record", "-N", f"127.0.0.1:{port}", "--proto", "1", "-t",
                            "-q", "-e", "sched", "sleep", "1"], check=True,
                           stdout=subprocess.DEVNULL)
        finally:
            restore(saved)
    time.sleep(1)
    lst.send_signal(signal.SIGINT)
    lst.wait(60)
    dats = [f for f in os.listdir(d) if f.endswith(".dat")]
    if len(dats) != 1:
        sys.exit(f"capture: expected one file, found {os.listdir(d)}")
    return os.path.join(d, dats[0])


def tree(root):
    """The pids of root and its descendants."""
    kids = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(p))
            except OSError:
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


class Sampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.stop = pid, False
        self.rss = self.threads = self.fds = 0

    def run(self):
        while not self.stop:
            rss = threads = fds = 0
            for p in tree(self.pid):
                try:
                    with open(f"/proc/{p}/status") as f:
                        for line in f:
                            if line.startswith("VmRSS:"):
                                rss += int(line.split()[1])
                            elif line.startswith("Threads:"):
                                threads += int(line.split()[1])
                    fds += len(os.listdir(f"/proc/{p}/fd"))
                except OSError:
                    pass
            self.rss, self.threads, self.fds = max(self.rss, rss), max(self.threads, threads), max(self.fds, fds)
            time.sleep(0.05)


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        v = f.read().rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime: fields 14-17 (index 11-14 after the name)
    return sum(int(x) for x in v[11:15]) / CLK


def wait_files(d, completed, since):
    """Waits until the listener has finished every file it will finish: as many
    .dat files as clients completed and no temporary files, or nothing changed in
    the directory for SETTLE s (a listener that keeps temporary files of failed
    clients). Returns when the last .dat was written (its mtime), or `since`."""
    last, seen, end = time.time(), None, time.time() + 600
    while time.time() < end:
        try:
            names = os.listdir(d)
            state = sorted((f, os.stat(os.path.join(d, f)).st_size) for f in names)
        except OSError:  # a file renamed between listdir and stat
            time.sleep(0.05)
            continue
        if (sum(1 for f in names if f.endswith(".dat")) >= completed
                and not any(".cpu" in f or f.endswith(".partial") for f in names)):
            break
        if state != seen:
            seen, last = state, time.time()
        elif time.time() - last > SETTLE:
            break
        time.sleep(0.2)
    mtimes = [os.stat(os.path.join(d, f)).st_mtime for f in os.listdir(d) if f.endswith(".dat")]
    return max(mtimes + [since])


def failures(stdout):
    """The replay client's per-client errors, counted by kind."""
    kinds = {}
    for line in stdout.splitlines():
        if m := re.match(r"client \d+: (.*)", line):
            k = re.sub(r"\d+", "N", m.group(1))
            kinds[k] = kinds.get(k, 0) + 1
    return "; ".join(f"{n}x {k}" for k, n in sorted(kinds.items(), key=lambda x: -x[1])[:4])


def one_run(which, cap, want, a, workdir, run):
    n = a.clients
    d = os.path.join(workdir, f"{which}-{run}")
    os.mkdir(d)
    port = free_port()
    if which == "ours":
        # The clients share this machine's CPUs with the listener: a client
        # thread can wait for a CPU far longer than the 5 s per-message timeout
        # meant for clients on machines of their own (issue 18: that, and not the
        # listener, closed the clients that failed with "Broken pipe").
        cmd = [OURS, "listen", "-p", str(port), "-d", d, "--timeout", str(a.listen_timeout)]
    else:
        cmd = [DEBIAN, "listen", "-p", str(port), "-d", d]
    lst = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    time.sleep(0.3)  # the probe's session ends
    for f in os.listdir(d):
        os.unlink(os.path.join(d, f))
    sampler = Sampler(lst.pid)
    sampler.start()
    cpu0 = cpu_s(lst.pid)
    t0 = time.time()
    try:
        rep = subprocess.run([REPLAY, cap, f"127.0.0.1:{port}", str(n), a.mode,
                              str(a.replay_timeout)],
                             capture_output=True, text=True, timeout=a.replay_limit)
        out = rep.stdout
    except subprocess.TimeoutExpired as e:
        # Never expected (every step of a replayed client is bounded); counted.
        out = (e.stdout or b"").decode() + "\nreplay killed at the run limit\n"
    replayed = time.time()
    m = re.search(r"completed=(\d+)", out)
    completed = int(m.group(1)) if m else 0
    wall = wait_files(d, completed, replayed) - t0
    time.sleep(0.5)
    cpu = cpu_s(lst.pid) - cpu0
    sampler.stop = True
    sampler.join()
    lst.send_signal(signal.SIGINT)
    try:
        lst.wait(60)
    except subprocess.TimeoutExpired:
        for p in tree(lst.pid):
            os.kill(p, signal.SIGKILL)
        lst.wait()
    dats = [os.path.join(d, f) for f in os.listdir(d) if f.endswith(".dat")]
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        full = sum(1 for e in pool.map(events, dats) if e == want)
    m = re.search(r"slowest_client_s=([\d.]+)", out)
    slowest = m.group(1) if m else "-"
    print(f"| {which} | {run} | {completed}/{n} | {full}/{n} | {wall:.1f} | "
          f"{sampler.rss / 1024:.0f} | {cpu:.1f} | {sampler.threads} | {sampler.fds} | {slowest} |",
          flush=True)
    if completed < n:
        print(f"   {which} run {run} failures: {failures(out) or out.strip()[-300:]}", flush=True)
    shutil.rmtree(d)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mode", default="mixed", choices=["mixed", "v1", "v3"])
    ap.add_argument("--listeners", default="ours,debian")
    ap.add_argument("--capture")
    ap.add_argument("--listen-timeout", type=int, default=60,
                    help="our listener's --timeout (s): clients share its CPUs here")
    ap.add_argument("--replay-timeout", type=int, default=60,
                    help="the replay client's bound on every connect, answer and send (s)")
    a = ap.parse_args()
    # A backstop only: the replay's own steps are bounded by --replay-timeout.
    a.replay_limit = 10 * a.replay_timeout + 120
    require(OURS, REPLAY, DEBIAN)
    workdir = tempfile.mkdtemp(prefix="listen-fleet-")
    try:
        cap = a.capture or capture(workdir)
        want = events(cap)
        print(f"capture {cap}: {want} events, {os.path.getsize(cap)} bytes; "
              f"{a.clients} clients ({a.mode}), somaxconn "
              f"{open('/proc/sys/net/core/somaxconn').read().strip()}")
        print("| listener | run | clients completed | files with all events | wall s | "
              "peak RSS MB | CPU s | peak threads | peak fds | slowest client s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for run in range(1, a.runs + 1):
            for which in a.listeners.split(","):
                one_run(which, cap, want, a, workdir, run)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
