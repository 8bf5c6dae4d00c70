#!/usr/bin/env bash
# Boot + virtio ports: the guest boots Debian's kernel under TCG, loads the virtio
# modules, finds its ports by name, and every port carries a line in both
# directions through the host FIFOs the way trace-cmd's virt-server uses them
# (spec §3.3, §8.1). Then the guest powers off and QEMU exits on its own.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
qemu_setup

ncpus=2
dom=$qemu_work/virt/testdom
mkdir -p "$dom"
names=(agent-ctl-path)
for ((k = 0; k < ncpus; k++)); do names+=("trace-path-cpu$k"); done
for name in "${names[@]}"; do mkfifo -m 0640 "$dom/$name.in" "$dom/$name.out"; done

"$qemu_here/mkinitramfs.sh" "$qemu_kernel_dir" "$qemu_work/initrd.cpio.gz"
start=$(date +%s)
qemu_start "$qemu_work/initrd.cpio.gz" "$dom" "$ncpus" ports

# QEMU opens both FIFOs of a port read-write, so none of these opens block once it runs;
# before that, the open of .out would block: wait for QEMU to hold them.
for name in "${names[@]}"; do
  exec {rfd}<>"$dom/$name.out"
  # Guest first (spec §8.1: host bytes sent before the guest opened its port can be lost).
  read_guest_line "$rfd" "$QEMU_BOOT_TIMEOUT" "a line from the guest on $name.out"
  [ "$line" = "ready $name" ] || fail "$name.out: expected 'ready $name', got '$line'"
  echo "ping $name $$" >"$dom/$name.in"
  read_guest_line "$rfd" 60 "the guest's echo on $name.out"
  [ "$line" = "echo ping $name $$" ] || fail "$name.out: expected 'echo ping $name $$', got '$line'"
  exec {rfd}<&-
  note "$name: guest -> host and host -> guest ok"
done

wait_exit "$qemu_pid" 120 || fail "QEMU exited with status $? (the guest should power off cleanly)"
grep -q "tcguest: ports done" "$qemu_work/console.log" || fail "the guest console lacks 'ports done'"
note "booted, exchanged on ${#names[@]} ports and powered off in $(($(date +%s) - start))s"
