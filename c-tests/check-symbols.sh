#!/bin/sh
# check-symbols.sh LIBDIR [CC [LIBS]]   (LIBS: what a static link needs besides the .a)
#
# 1. Every name listed in c-tests/symbols-*.txt must be a defined global symbol of
#    BOTH LIBDIR/libtracecmd_rs.a and LIBDIR/libtracecmd_rs.so (spec §7). Lists are
#    per issue: symbols-msg.txt (message layer), later symbols-recorder.txt.
# 2. Names in weak-symbols.txt, which trace-cmd's own program also defines, must link
#    from the static library next to a program's own strong definition (spec §7:
#    "Both must link").
# Prints every missing name and exits non-zero if any check fails.
set -u
libdir=${1:?usage: check-symbols.sh LIBDIR [CC [LIBS]]}
cc=${2:-cc}
libs=${3:--lpthread -ldl -lm -lrt -lgcc_s -lutil}
here=$(cd "$(dirname "$0")" && pwd)
a=$libdir/libtracecmd_rs.a
so=$libdir/libtracecmd_rs.so
status=0

for f in "$a" "$so"; do
	[ -f "$f" ] || { echo "check-symbols: $f does not exist (run make lib)"; exit 1; }
done

tmp=$(mktemp -d /tmp/tc-symbols.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# Defined global symbols: T/D/B/R/W/V/G/S (any defined, externally visible kind).
nm -g --defined-only "$a" 2>/dev/null | awk 'NF >= 3 { print $3 }' | sort -u > "$tmp/a"
nm -D --defined-only "$so" | awk 'NF >= 3 { print $3 }' | sed 's/@.*//' | sort -u > "$tmp/so"

wanted=$(cat "$here"/symbols-*.txt | sed 's/#.*//' | tr -s ' \t' '\n\n' | grep -v '^$' | sort -u)
for lib in a so; do
	missing=""
	for s in $wanted; do
		grep -qx "$s" "$tmp/$lib" || missing="$missing $s"
	done
	if [ -n "$missing" ]; then
		echo "check-symbols: libtracecmd_rs.$lib does not define:$missing"
		status=1
	else
		echo "check-symbols: libtracecmd_rs.$lib defines all $(echo "$wanted" | wc -l) listed symbols"
	fi
done

# A program that defines its own copy of a weak-listed function and also pulls in the
# message layer must link statically without a "multiple definition" error.
if [ -f "$here/weak-symbols.txt" ]; then
	for s in $(sed 's/#.*//' "$here/weak-symbols.txt"); do
		cat > "$tmp/own.c" <<C
#include <stddef.h>
struct tracecmd_msg_handle;
struct tracecmd_msg_handle *tracecmd_msg_handle_alloc(int fd, unsigned long flags);
int $s(void) { return 42; }
int main(void) { return tracecmd_msg_handle_alloc(-1, 0) == NULL; }
C
		if ! $cc -o "$tmp/own" "$tmp/own.c" "$a" $libs \
			> "$tmp/ld.log" 2>&1; then
			echo "check-symbols: a program defining its own $s does not link with libtracecmd_rs.a:"
			sed 's/^/    /' "$tmp/ld.log"
			status=1
		else
			echo "check-symbols: own $s links next to libtracecmd_rs.a"
		fi
	done
fi
exit $status
