#!/bin/sh
# Folds the inputs that `make fuzz` found (fuzz/new/<target>) into the
# checked-in corpus and minimises it with `cargo fuzz cmin` (or only the
# targets named).
set -eu
cd "$(dirname "$0")/.."
TARGETS=${*:-$(cargo +nightly fuzz list --fuzz-dir fuzz)}
for t in $TARGETS; do
    if [ -d "fuzz/new/$t" ]; then
        cp -n fuzz/new/$t/* "fuzz/corpus/$t/" 2>/dev/null || true
        rm -rf "fuzz/new/$t"
    fi
    nice -n "${FUZZ_NICE:-10}" cargo +nightly fuzz cmin -O --fuzz-dir fuzz "$t" "fuzz/corpus/$t" -- \
        -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=20 -detect_leaks=0 >"fuzz/logs/cmin-$t.log" 2>&1
    echo "$t: $(ls fuzz/corpus/$t | wc -l) inputs, $(du -sk fuzz/corpus/$t | cut -f1) KiB"
done
