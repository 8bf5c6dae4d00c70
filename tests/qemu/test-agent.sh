#!/usr/bin/env bash
# The whole virt-server flow with a real guest (issue 6, done-when #2): our
# `trace-cmd listen --virt` and `connect -f` on the host, QEMU booting Debian's kernel
# whose initramfs runs our `trace-cmd agent --virt`, then
# `record -e sched -A DOM -e sched` on the host, and Debian's `trace-cmd report`
# must show the guest's sched events (its marker process tcguest-load) and the host's
# (the recorded command, a copy of sleep named tchost-mark).
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
(cd "$qemu_work" && timeout 300 "$tc" record -o "$out" -e sched -A "$dom" -e sched ./tchost-mark 2) \
  >"$qemu_work/record.log" 2>&1 || fail "record -A $dom failed (status $?): $(tail -n 20 "$qemu_work/record.log")"
[ -s "$out" ] || fail "record -A wrote no $out"

"$report" report "$out" >"$qemu_work/report.txt" 2>"$qemu_work/report.err" ||
  fail "Debian's trace-cmd report cannot read $out: $(head -n 20 "$qemu_work/report.err")"
# Guest events are in the buffer named after the domain ("tcguest: ..." lines), host
# events in the top buffer (lines without that prefix).
rep=$qemu_work/report.txt
grep -q "^$dom: " "$rep" || fail "the report has no $dom buffer lines ($(grep -c . "$rep") lines)"
grep "^$dom: " "$rep" | grep "sched_switch:" | grep "tcguest-load" >/dev/null ||
  fail "no guest sched_switch of tcguest-load in the $dom buffer ($(grep -c "^$dom: " "$rep") guest lines, e.g. '$(grep -m1 "^$dom: " "$rep")')"
grep -v "^$dom: " "$rep" | grep "sched_switch:" | grep "tchost-mark" >/dev/null ||
  fail "no host sched_switch of tchost-mark in the top buffer"
grep -v "^$dom: " "$rep" | grep "tcguest-load" >/dev/null && fail "a guest-only process shows in the host buffer"
note "report: $(grep -c "^$dom: " "$rep") guest lines ($(grep -c "^$dom: .*tcguest-load" "$rep") of tcguest-load), $(grep -vc "^$dom: " "$rep") host lines"

# A finished manager releases the agent for the next one (spec §3.6): it is listed
# again and a second recording works.
"$tc" list -A >"$qemu_work/list.out" 2>&1 || true
grep -qx "$dom with $ncpus cpus" "$qemu_work/list.out" ||
  fail "after the recording the agent is no longer listed: $(cat "$qemu_work/list.out")"
out2=$qemu_work/out2.dat
(cd "$qemu_work" && timeout 300 "$tc" record -o "$out2" -A "$dom" -e sched:sched_switch sleep 1) \
  >"$qemu_work/record2.log" 2>&1 || fail "the second record -A $dom failed (status $?): $(tail -n 20 "$qemu_work/record2.log")"
"$report" report "$out2" >"$qemu_work/report2.txt" 2>"$qemu_work/report2.err" ||
  fail "Debian's trace-cmd report cannot read $out2: $(head -n 20 "$qemu_work/report2.err")"
grep "sched_switch:" "$qemu_work/report2.txt" | grep "tcguest-load" >/dev/null ||
  fail "the second recording shows no guest sched_switch of tcguest-load"

after=$(tracefs_state)
[ "$before" = "$after" ] || fail "tracefs is not as found after the test:
before: $before
after:  $after"
