#!/usr/bin/env bash
# Builds the test guest's initramfs (cpio newc, gzip): busybox-static, the virtio
# modules of spec §8.1, tests/qemu/init, and optionally programs with the shared
# libraries they need (found with ldd), copied to /bin.
#
#   tests/qemu/mkinitramfs.sh KERNEL_DIR OUT.cpio.gz [PROGRAM...]
#
# KERNEL_DIR is what fetch-kernel.sh printed (boot/ and lib/modules/<version>/ inside).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "mkinitramfs: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: $0 KERNEL_DIR OUT.cpio.gz [PROGRAM...]"
kdir=$1
out=$2
shift 2

busybox=/bin/busybox
[ -x "$busybox" ] || die "$busybox is missing: install the Debian package busybox-static"
# A dynamically linked busybox would need its libraries in the image as well.
if ldd "$busybox" >/dev/null 2>&1; then
  die "$busybox is dynamically linked: install busybox-static (not busybox)"
fi
command -v cpio >/dev/null || die "cpio is missing: install the Debian package cpio"

mods=$(ls -d "$kdir"/lib/modules/*/ 2>/dev/null | head -n1)
[ -n "$mods" ] || die "$kdir/lib/modules/<version> is missing: run fetch-kernel.sh"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,tmp,lib/modules}
cp "$busybox" "$stage/bin/busybox"
install -m 755 "$here/init" "$stage/init"
want="virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_console"
declare -A deps
for m in $want; do
  f=$(find "$mods" -name "$m.ko*" | head -n1)
  [ -n "$f" ] || die "module $m is not in $mods"
  case "$f" in
    *.ko) cp "$f" "$stage/lib/modules/$m.ko" ;;
    *.ko.xz) xz -dc "$f" >"$stage/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$f" >"$stage/lib/modules/$m.ko" ;;
    *) die "cannot unpack the module $f" ;;
  esac
  # The modinfo "depends=" field (in .modinfo, NUL-separated); every dependency must be
  # one of the modules we copy, or the guest's insmod fails with "unknown symbol".
  d=$(tr '\0' '\n' <"$stage/lib/modules/$m.ko" | sed -n 's/^depends=//p' | head -n1)
  for dep in ${d//,/ }; do
    [[ " $want " == *" $dep "* ]] || die "module $m needs $dep, which the image does not hold"
  done
  deps[$m]=${d//,/ }
done
# Load order: each module after those it depends on. (The order listed in spec §8.1,
# virtio before virtio_ring, fails here: virtio.ko depends on virtio_ring.)
order=()
while [ ${#order[@]} -lt ${#deps[@]} ]; do
  progress=
  for m in $want; do
    [[ " ${order[*]} " == *" $m "* ]] && continue
    ready=1
    for dep in ${deps[$m]}; do [[ " ${order[*]} " == *" $dep "* ]] || ready=; done
    [ -n "$ready" ] && { order+=("$m"); progress=1; }
  done
  [ -n "$progress" ] || die "the module dependencies form a cycle"
done
printf '%s\n' "${order[@]}" >"$stage/lib/modules/order"

# Each program goes to /bin; each library it loads goes to the same absolute path
# in the image as on the host, so the dynamic loader finds it where ld.so expects.
for prog in "$@"; do
  [ -x "$prog" ] || die "$prog is not an executable file"
  cp "$prog" "$stage/bin/"
  libs=$(ldd "$prog" 2>/dev/null | grep -o '/[^ ]*' || true)
  for lib in $libs; do
    [ -e "$lib" ] || continue
    mkdir -p "$stage$(dirname "$lib")"
    cp -L "$lib" "$stage$lib"
  done
done

mkdir -p "$(dirname "$out")"
(cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$out.tmp"
mv -f "$out.tmp" "$out"
