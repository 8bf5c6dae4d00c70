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
    ASAN_OPTIONS=detect_leaks=0 nice -n "${FUZZ_NICE:-10}" cargo +nightly fuzz cmin -O --fuzz-dir fuzz "$t" "fuzz/corpus/$t" -- \
        -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=20 -detect_leaks=0 >"fuzz/logs/cmin-$t.log" 2>&1
    # cmin renames every input to its SHA-1: give the named seeds (the captured
    # sessions and golden files) their names back, and keep the corpus small by
    # dropping found inputs over 16 KiB (the seeds cover the big, valid shapes).
    for seed in $(git ls-files "fuzz/corpus/$t" | grep -Ev '/[0-9a-f]{40}$'); do
        git checkout -- "$seed"
        rm -f "fuzz/corpus/$t/$(sha1sum "$seed" | cut -c1-40)"
    done
    find "fuzz/corpus/$t" -type f -size +16k | grep -E '/[0-9a-f]{40}$' | xargs -r rm -f
    echo "$t: $(ls fuzz/corpus/$t | wc -l) inputs, $(du -sk fuzz/corpus/$t | cut -f1) KiB"
done
