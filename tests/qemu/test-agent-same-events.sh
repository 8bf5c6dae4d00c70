#!/usr/bin/env bash
# Host and guest record the same system, the issue's own example
# `record -e sched -A DOM -e sched ./tchost-mark 2`: Debian's report must decode the
# guest's sched_switch events (of its tcguest-load process) in the DOM buffer, although
# the guest kernel (6.1) numbers the sched events differently from the host's.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
qemu_setup

dom=tcguest
ncpus=2
virt_tools
virt_guest_up "$dom" "$ncpus"
cp "$(command -v sleep)" "$qemu_work/tchost-mark"

record_report both -e sched -A "$dom" -e sched ./tchost-mark 2
rep=$qemu_work/both.txt
grep -v "^$dom: " "$rep" | grep "sched_switch:" | grep "tchost-mark" >/dev/null ||
  fail "no host sched_switch of tchost-mark in the top buffer"
grep "^$dom: " "$rep" | grep "sched_switch:" | grep "tcguest-load" >/dev/null ||
  fail "no guest sched_switch of tcguest-load in the $dom buffer ($(grep -c "^$dom: " "$rep") guest lines, e.g. '$(grep -m1 "^$dom: " "$rep")'; record said: $(grep -m1 -i "warn" "$qemu_work/both.log"))"
note "$(grep -c "^$dom: " "$rep") guest lines, $(grep -vc "^$dom: " "$rep") host lines"
