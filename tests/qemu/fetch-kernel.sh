#!/usr/bin/env bash
# Puts Debian's amd64 kernel (the package linux-image-amd64 points at) into a cache
# directory without installing it, and prints the unpacked directory.
#
#   tests/qemu/fetch-kernel.sh [CACHE_DIR]     (default: target/qemu-cache, or $QEMU_CACHE)
#
# Only what a guest of the QEMU tests needs is unpacked from the .deb: boot/vmlinuz-* and
# the virtio modules of spec §8.1. A second run with the same package version does
# nothing but print the directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${1:-${QEMU_CACHE:-$root/target/qemu-cache}}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

die() { echo "fetch-kernel: $*" >&2; exit 1; }

# The metapackage linux-image-amd64 depends on exactly one linux-image-<abi>-amd64.
resolve() {
  apt-cache depends linux-image-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-amd64$/ { print $2; exit }'
}
pkg=$(resolve || true)
if [ -z "$pkg" ] && [ "$(id -u)" = 0 ]; then
  apt-get update -qq >&2 || true
  pkg=$(resolve || true)
fi
if [ -z "$pkg" ]; then
  # Offline or no package lists: reuse what an earlier run unpacked, if anything.
  [ -e "$cache/kernel/boot" ] || die "apt-cache knows no linux-image-amd64 and $cache/kernel is empty; run 'apt-get update' (as root) first"
  echo "fetch-kernel: apt-cache knows no linux-image-amd64; using the cached $(readlink "$cache/kernel")" >&2
  echo "$cache/kernel"
  exit 0
fi

dest=$cache/$pkg
if ! ls "$dest"/boot/vmlinuz-* >/dev/null 2>&1; then
  tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  echo "fetch-kernel: downloading $pkg into $cache" >&2
  # As root, apt would hand the download to the _apt user, who cannot write here.
  get() { (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2); }
  if ! get; then
    # Stale package lists name a version the archive no longer has: refresh once.
    if ! { [ "$(id -u)" = 0 ] && apt-get update -qq >&2 && get; }; then
      # Offline with an older kernel cached: that one boots the tests just as well.
      if [ -e "$cache/kernel/boot" ]; then
        echo "fetch-kernel: cannot download $pkg; using the cached $(readlink "$cache/kernel")" >&2
        echo "$cache/kernel"
        exit 0
      fi
      die "apt-get download $pkg failed"
    fi
  fi
  deb=$(ls "$tmp"/*.deb)
  mkdir -p "$tmp/root"
  # The same unpacking as dpkg-deb -x, limited to the kernel and the virtio modules
  # (the whole package unpacks to several hundred MB).
  dpkg-deb --fsys-tarfile "$deb" |
    tar -x -C "$tmp/root" --wildcards './boot/vmlinuz-*' \
      './lib/modules/*/kernel/drivers/virtio/*' \
      './lib/modules/*/kernel/drivers/char/virtio_console.ko*' ||
    die "cannot unpack $deb"
  ls "$tmp"/root/boot/vmlinuz-* >/dev/null 2>&1 || die "$deb holds no boot/vmlinuz-*"
  rm -rf "$dest"
  mv "$tmp/root" "$dest"
fi
ln -sfn "$pkg" "$cache/kernel"
echo "$cache/kernel"
