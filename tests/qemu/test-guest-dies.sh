#!/usr/bin/env bash
# The guest dies mid-recording (issue 6 item 7, with a real guest): QEMU is killed
# while `record -e sched -A DOM -e sched` runs. record must end on its own (no hang),
# say what happened about the guest, exit non-zero, and leave a trace.dat that Debian's
# report reads, with the host's events and the guest's events received before the death.
# The listener must survive.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
qemu_setup

dom=tcguest
ncpus=2
virt_tools
before=$(tracefs_state)
virt_guest_up "$dom" "$ncpus"

cp "$(command -v sleep)" "$qemu_work/tchost-mark"
out=$qemu_work/out.dat
(cd "$qemu_work" && exec "$tc" record -o "$out" -e sched -A "$dom" -e sched ./tchost-mark 8) \
  >"$qemu_work/record.log" 2>&1 &
record_pid=$!
qemu_pids+=("$record_pid")

# Let the guest's data flow for a while, then pull the plug.
for ((i = 0; i < 60; i++)); do
  grep -q "manager asks to record" "$qemu_work/console.log" && break
  kill -0 "$record_pid" 2>/dev/null || fail "record ended before the guest started recording"
  sleep 0.5
done
grep -q "manager asks to record" "$qemu_work/console.log" || fail "the agent never got the record arguments"
sleep 3
{ kill -KILL "$qemu_pid" && wait "$qemu_pid"; } 2>/dev/null || true
note "killed QEMU during the recording"

# record must end by itself: its command lasts 8 s, and a stop handshake with the dead
# agent gives up after its timeout (30 s); 120 s is a generous bound, not a hang.
set +e
wait_exit "$record_pid" 120
status=$?
set -e
[ "$status" -ne 0 ] || fail "record exited 0 although the guest died: $(tail -n 5 "$qemu_work/record.log")"
grep -qi "$dom" "$qemu_work/record.log" ||
  fail "record's messages do not name the guest $dom: $(tail -n 10 "$qemu_work/record.log")"
note "record exited with $status: $(grep -i "$dom" "$qemu_work/record.log" | tail -n 1)"

[ -s "$out" ] || fail "record left no $out"
"$report" report "$out" >"$qemu_work/report.txt" 2>"$qemu_work/report.err" ||
  fail "Debian's trace-cmd report cannot read $out: $(head -n 20 "$qemu_work/report.err")"
rep=$qemu_work/report.txt
grep -v "^$dom: " "$rep" | grep "sched_switch:" | grep "tchost-mark" >/dev/null ||
  fail "no host sched_switch of tchost-mark in the top buffer"
grep -q "^$dom: " "$rep" || fail "no guest data received before the death is in the report"
note "report: $(grep -c "^$dom: " "$rep") guest lines, $(grep -vc "^$dom: " "$rep") host lines"

kill -0 "$listener_pid" 2>/dev/null || fail "the listener died with the guest"
"$tc" list -G >"$qemu_work/list.out" 2>&1 || fail "list -G failed after the guest died: $(cat "$qemu_work/list.out")"

tracefs_as_found "$before"
