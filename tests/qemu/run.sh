#!/usr/bin/env bash
# Runs every tests/qemu/test-*.sh (or those named as arguments) one after the other
# and prints one summary line. Exit status 0 only when all passed.
#   tests/qemu/run.sh [test-ports ...]
# Environment: QEMU_CACHE (kernel cache dir), QEMU_BOOT_TIMEOUT (s), QEMU_KEEP=1
# (keep each test's work dir with the guest console log).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ $# -gt 0 ]; then
  tests=()
  for t in "$@"; do tests+=("$here/${t%.sh}.sh"); done
else
  tests=("$here"/test-*.sh)
fi
passed=0
failed=0
for t in "${tests[@]}"; do
  name=$(basename "$t" .sh)
  start=$(date +%s)
  if "$t"; then
    echo "qemu: $name ... ok ($(($(date +%s) - start))s)"
    passed=$((passed + 1))
  else
    echo "qemu: $name ... FAILED ($(($(date +%s) - start))s)"
    failed=$((failed + 1))
  fi
done
echo "qemu: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
