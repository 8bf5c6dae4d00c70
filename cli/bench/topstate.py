"""What the benchmark scripts share: the precondition check (root, the tools),
and the top-level tracefs state: read, write, and a snapshot of what a recording
changes (enabled events, tracing_on, clock, buffer size) that restore() puts
back, so a benchmark leaves tracefs as it found it."""

import os
import re
import sys

TRACING = "/sys/kernel/tracing"
DEBIAN = "/usr/bin/trace-cmd"
# The sandbox that lets Debian's trace-cmd record here lies in shared/, beside
# the repository: <repo>/cli/bench/ -> <repo>/../shared/tools/ftrace-sandbox.
SANDBOX = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                        "../../../shared/tools/ftrace-sandbox"))


def require(*tools):
    """Exits with the reason unless running as root with every tool executable."""
    if os.geteuid() != 0:
        sys.exit("needs root")
    for p in tools:
        if not os.access(p, os.X_OK):
            sys.exit(f"missing {p} (build with `cargo build --release -p trace-cmd`)")


def tr_read(path):
    with open(os.path.join(TRACING, path)) as f:
        return f.read()


def tr_write(path, text):
    with open(os.path.join(TRACING, path), "w") as f:
        f.write(text)


def snapshot():
    return {
        "events": [l.strip() for l in tr_read("set_event").splitlines() if l.strip()],
        "tracing_on": tr_read("tracing_on").strip(),
        "clock": re.search(r"\[(\S+)\]", tr_read("trace_clock")).group(1),
        "buffer_kb": tr_read("buffer_size_kb").split()[0],
    }


def restore(s):
    """Puts back what differs from the snapshot s."""
    now = snapshot()
    if now["events"] != s["events"]:
        tr_write("set_event", "")  # O_TRUNC clears the list
        for ev in s["events"]:
            system, _, name = ev.partition(":")
            try:
                tr_write(f"events/{system}/{name}/enable", "1")
            except OSError as e:
                print(f"could not re-enable event {ev}: {e}", file=sys.stderr)
    if now["clock"] != s["clock"]:
        tr_write("trace_clock", s["clock"])
    if now["buffer_kb"] != s["buffer_kb"]:
        tr_write("buffer_size_kb", s["buffer_kb"])
    if now["tracing_on"] != s["tracing_on"]:
        tr_write("tracing_on", s["tracing_on"])
