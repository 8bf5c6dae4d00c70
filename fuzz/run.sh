#!/bin/sh
# Runs every fuzz target (or those named) for FUZZ_SECONDS each, on the checked-in
# corpus, and prints libFuzzer's last coverage line per target. Installs
# cargo-fuzz if it is missing; needs the nightly toolchain. New corpus entries
# go to fuzz/new/ so that the checked-in corpus only changes through
# `make fuzz-cmin`. Any crash, leak, timeout or over-allocation fails the run.
set -eu
cd "$(dirname "$0")/.."
SECS=${FUZZ_SECONDS:-60}
NICE=${FUZZ_NICE:-10}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
TARGETS=${*:-$(cargo +nightly fuzz list --fuzz-dir fuzz)}
nice -n "$NICE" cargo +nightly fuzz build -O --fuzz-dir fuzz
mkdir -p fuzz/logs
status=0
for t in $TARGETS; do
    # New inputs land in fuzz/new/<target> (not checked in); `make fuzz-cmin`
    # folds them into the checked-in corpus, minimised.
    scratch=fuzz/new/$t
    mkdir -p "$scratch"
    echo "== $t: ${SECS}s"
    # Big inputs only for the targets whose inputs are whole streams or files.
    case $t in
        listen_session|msg_v1|msg_v2|msg_v3|negotiate|dat_reader|metadata) maxlen=131072 ;;
        *) maxlen=8192 ;;
    esac
    # The socket targets run threads (feeders, the listener's sessions) whose
    # thread-local destructors LeakSanitizer reports at exit; their memory is
    # still bounded by -rss_limit_mb/-malloc_limit_mb.
    case $t in
        dat_reader|metadata|page_walker) leaks=1 ;;
        *) leaks=0 ;;
    esac
    # LeakSanitizer also checks once more at exit, outside libFuzzer's flag: a
    # session thread still alive when -max_total_time ends is reported there.
    if ! ASAN_OPTIONS="detect_leaks=$leaks" nice -n "$NICE" cargo +nightly fuzz run -O --fuzz-dir fuzz "$t" "$scratch" "fuzz/corpus/$t" -- \
        -max_total_time="$SECS" -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=20 -detect_leaks="$leaks" \
        -max_len="$maxlen" -print_final_stats=1 >"fuzz/logs/$t.log" 2>&1; then
        status=1
        echo "   FAILED: see fuzz/logs/$t.log and fuzz/artifacts/$t/"
    fi
    grep -E '^#[0-9]+.*(DONE|cov:)' "fuzz/logs/$t.log" | tail -n 1 | sed 's/^/   /'
done
exit $status
