# shellcheck shell=bash
# Shared pieces of the QEMU tests (sourced, not run). Every test script:
#   . "$(dirname "$0")/lib.sh"; qemu_setup     (work dir, kernel, cleanup trap)
# and then starts its processes with the helpers below, which register them for
# the cleanup that runs on every exit path.

qemu_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
qemu_root=$(cd "$qemu_here/../.." && pwd)
QEMU_CACHE=${QEMU_CACHE:-$qemu_root/target/qemu-cache}
# Wall-clock bound for a boot to the guest's first port write (6–11 s measured
# under TCG on an idle machine, spec §8.1; much more when other builds share the cores).
QEMU_BOOT_TIMEOUT=${QEMU_BOOT_TIMEOUT:-180}
QEMU_BIN=${QEMU_BIN:-qemu-system-x86_64}

qemu_pids=()
qemu_cleanups=()

fail() {
  echo "FAIL ${qemu_test:-qemu}: $*" >&2
  qemu_dump_logs >&2
  exit 1
}

note() { echo "${qemu_test:-qemu}: $*" >&2; }

# The logs of the guest console and of any process started with spawn, for a failure.
qemu_dump_logs() {
  local f
  for f in "$qemu_work"/*.log; do
    [ -s "$f" ] || continue
    echo "---- ${f##*/} (last 40 lines)"
    tail -n 40 "$f"
  done
}

qemu_cleanup() {
  local rc=$? pid i
  trap - EXIT INT TERM
  for pid in "${qemu_pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${qemu_pids[@]}"; do
    # Up to 5 s for a clean end, then SIGKILL.
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  for i in "${qemu_cleanups[@]}"; do eval "$i" || true; done
  if [ -n "${qemu_work:-}" ] && [ -z "${QEMU_KEEP:-}" ]; then
    rm -rf "$qemu_work"
  elif [ -n "${qemu_work:-}" ]; then
    echo "${qemu_test:-qemu}: kept $qemu_work" >&2
  fi
  exit "$rc"
}

qemu_setup() {
  qemu_test=${qemu_test:-$(basename "$0" .sh)}
  command -v "$QEMU_BIN" >/dev/null ||
    { echo "FAIL $qemu_test: $QEMU_BIN is missing: install the Debian package qemu-system-x86 (.ci/install-deps does)" >&2; exit 1; }
  qemu_work=$(mktemp -d "${TMPDIR:-/tmp}/tc-qemu-$qemu_test.XXXXXX")
  trap qemu_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  qemu_kernel_dir=$("$qemu_here/fetch-kernel.sh" "$QEMU_CACHE") || fail "no kernel (fetch-kernel.sh failed)"
  qemu_vmlinuz=$(ls "$qemu_kernel_dir"/boot/vmlinuz-* | head -n1)
}

# spawn LOGNAME CMD...: runs CMD in the background with its output in $qemu_work/LOGNAME.log,
# registers it for cleanup and sets $spawned to its pid.
spawn() {
  local name=$1
  shift
  "$@" </dev/null >"$qemu_work/$name.log" 2>&1 &
  spawned=$!
  qemu_pids+=("$spawned")
}

# qemu_start INITRD DOMDIR NCPUS MODE [NAME=PATH...]: boots the test guest with 2 vCPUs
# (TCG), a virtio-serial port agent-ctl-path and trace-path-cpu0..NCPUS-1, each bound with
# a pipe chardev to DOMDIR/<name>.in/.out (which must exist: spec §8.1), and one more port
# NAME bound to PATH.in/.out for each NAME=PATH (spare ports for a test's own traffic).
# MODE is the init's tcmode. The console goes to $qemu_work/console.log; $qemu_pid is
# QEMU's pid.
qemu_start() {
  local initrd=$1 domdir=$2 ncpus=$3 mode=$4 names=(agent-ctl-path) paths=() args=() k name
  shift 4
  for ((k = 0; k < ncpus; k++)); do names+=("trace-path-cpu$k"); done
  for name in "${names[@]}"; do paths+=("$domdir/$name"); done
  for k in "$@"; do
    names+=("${k%%=*}")
    paths+=("${k#*=}")
  done
  # shellcheck disable=SC2054 # the commas belong to QEMU's option
  args+=(-device virtio-serial-pci,id=virtio-serial0)
  for ((k = 0; k < ${#names[@]}; k++)); do
    name=${names[$k]}
    if ! [ -p "${paths[$k]}.in" ] || ! [ -p "${paths[$k]}.out" ]; then
      fail "${paths[$k]}.in and .out must be FIFOs before QEMU starts"
    fi
    # nr 0 of a virtio-serial bus is reserved for a console: ports start at 1.
    args+=(-chardev "pipe,id=c$((k + 1)),path=${paths[$k]}"
      -device "virtserialport,bus=virtio-serial0.0,nr=$((k + 1)),chardev=c$((k + 1)),name=$name")
  done
  spawn console "$QEMU_BIN" -accel tcg,thread=single -cpu max -smp 2 -m 512 \
    -nographic -no-reboot -nic none \
    -kernel "$qemu_vmlinuz" -initrd "$initrd" \
    -append "console=ttyS0 quiet panic=-1 tcmode=$mode tcports=${#names[@]}" \
    "${args[@]}"
  qemu_pid=$spawned
}

# wait_exit PID SECONDS: waits for PID (a child of this shell) to end; fails after SECONDS.
wait_exit() {
  local pid=$1 secs=$2 i
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return $?; }
    sleep 0.1
  done
  fail "process $pid still running after ${secs}s"
}

# read_guest_line FD SECS WHAT: reads one line from FD into $line, giving up after SECS
# or as soon as QEMU has exited (a FIFO held open read-write never reports EOF).
read_guest_line() {
  local fd=$1 secs=$2 what=$3 i acc=
  line=
  for ((i = 0; i < secs; i++)); do
    if read -r -t 1 -u "$fd" line; then
      line=$acc$line
      return 0
    fi
    # A timed-out read has consumed and kept a partial line: keep it for the next try.
    acc=$acc$line
    kill -0 "$qemu_pid" 2>/dev/null || fail "QEMU exited while waiting for $what"
  done
  fail "timed out after ${secs}s waiting for $what"
}

# virt_tools: sets $tc (our trace-cmd, the binary under test), $report (Debian's
# trace-cmd, the reader) and $tracing, checking each is there.
virt_tools() {
  tc=${TRACE_CMD:-$qemu_root/target/release/trace-cmd}
  [ -x "$tc" ] || fail "$tc is missing: build it first (make lib, or cargo build --release -p trace-cmd)"
  report=${TRACE_CMD_REPORT:-/usr/bin/trace-cmd}
  [ -x "$report" ] || fail "$report (Debian's trace-cmd, the reader) is missing: install the Debian package trace-cmd"
  tracing=/sys/kernel/tracing
  [ -e "$tracing/tracing_on" ] || fail "tracefs is not mounted at $tracing (run as root; .ci/install-deps mounts it)"
}

# What record touches on the host's top-level buffer, to compare before and after.
# (Instances are left out: tests running beside this one make and remove their own.)
tracefs_state() {
  cat "$tracing/tracing_on" "$tracing/buffer_size_kb" "$tracing/current_tracer" "$tracing/set_event"
  cat "$tracing/events/sched/enable" 2>/dev/null || true
}

# tracefs_as_found BEFORE: fails unless tracefs_state is BEFORE again.
tracefs_as_found() {
  local after
  after=$(tracefs_state)
  [ "$1" = "$after" ] && return 0
  fail "the host's top-level tracefs buffer is not as found after the test (or another program used it meanwhile: these tests need it to themselves):
before: $(echo "$1" | head -n 8 | tr '\n' ' ')
after:  $(echo "$after" | head -n 8 | tr '\n' ' ')"
}

# virt_guest_up DOM NCPUS [NAME=PATH...]: private run and virt dirs
# (TRACE_CMD_RUN_DIR/_VIRT_DIR), `listen --virt`, `connect -f -c NCPUS DOM`, QEMU running
# our agent (with the spare ports NAME=PATH of qemu_start), and waits until `list -A`
# shows the agent. Sets $listener_pid and $qemu_pid.
virt_guest_up() {
  local dom=$1 ncpus=$2 i start registered=
  shift 2
  export TRACE_CMD_RUN_DIR=$qemu_work/run TRACE_CMD_VIRT_DIR=$qemu_work/virt
  mkdir -p "$TRACE_CMD_RUN_DIR" "$TRACE_CMD_VIRT_DIR"
  "$qemu_here/mkinitramfs.sh" "$qemu_kernel_dir" "$qemu_work/initrd.cpio.gz" "$tc"

  spawn listener "$tc" listen --virt
  listener_pid=$spawned
  for ((i = 0; i < 100; i++)); do
    [ -S "$TRACE_CMD_RUN_DIR/manager-ctl-path" ] && break
    kill -0 "$listener_pid" 2>/dev/null || fail "listen --virt exited"
    sleep 0.1
  done
  [ -S "$TRACE_CMD_RUN_DIR/manager-ctl-path" ] || fail "listen --virt made no manager socket within 10s"

  "$tc" connect -f -c "$ncpus" -g "$(id -gn)" "$dom" >"$qemu_work/connect.log" 2>&1 ||
    fail "connect -f -c $ncpus $dom failed: $(cat "$qemu_work/connect.log")"
  grep -q "registered" "$qemu_work/connect.log" || fail "connect did not report the registration"

  start=$(date +%s)
  qemu_start "$qemu_work/initrd.cpio.gz" "$TRACE_CMD_VIRT_DIR/$dom" "$ncpus" agent "$@"
  # The agent registers (TCONNECT/CINIT through the listener) once the guest is up.
  for ((i = 0; i < QEMU_BOOT_TIMEOUT; i++)); do
    "$tc" list -A >"$qemu_work/list.out" 2>&1 || true
    if grep -qx "$dom with $ncpus cpus" "$qemu_work/list.out"; then registered=1; break; fi
    kill -0 "$qemu_pid" 2>/dev/null || fail "QEMU exited before the agent registered"
    kill -0 "$listener_pid" 2>/dev/null || fail "listen --virt exited before the agent registered"
    sleep 1
  done
  [ -n "$registered" ] ||
    fail "list -A did not show '$dom with $ncpus cpus' within ${QEMU_BOOT_TIMEOUT}s: $(cat "$qemu_work/list.out")"
  note "agent registered $(($(date +%s) - start))s after QEMU started"
}

# record_report NAME ARGS...: runs our `trace-cmd record -o NAME.dat ARGS...` in the work
# dir, then Debian's report on it into NAME.txt.
record_report() {
  local name=$1
  shift
  (cd "$qemu_work" && timeout 300 "$tc" record -o "$name.dat" "$@") >"$qemu_work/$name.log" 2>&1 ||
    fail "record -o $name.dat $* failed (status $?): $(tail -n 20 "$qemu_work/$name.log")"
  [ -s "$qemu_work/$name.dat" ] || fail "record wrote no $name.dat"
  "$report" report "$qemu_work/$name.dat" >"$qemu_work/$name.txt" 2>"$qemu_work/$name.err" ||
    fail "Debian's trace-cmd report cannot read $name.dat: $(head -n 20 "$qemu_work/$name.err")"
}
