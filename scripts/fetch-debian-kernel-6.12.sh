#!/usr/bin/env bash
# Download Debian's 6.12 cloud kernel (bookworm-security's newest
# linux-image-6.12.*+deb12-cloud-amd64-unsigned) into .cache/debian-kernel-6.12/ and unpack it there.
# Its vmlinux carries the Xen PHYS32_RELOC note (6.1's does not): the rig tier's relocation test
# (tests/rig/test_reloc.py) boots it at addresses other than its link address.  Never committed
# (.cache is git-ignored).  Prints the unpacked directory.  Idempotent.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="$root/.cache/debian-kernel-6.12"
mkdir -p "$cache"
cd "$cache"
if ! ls linux-image-6.12.*-cloud-amd64-unsigned_*.deb >/dev/null 2>&1; then
    [ -n "$(ls /var/lib/apt/lists/*_Packages* 2>/dev/null | head -1)" ] || apt-get update -q >&2
    pkg=$(apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$' \
          | awk '{print $1}' | sort -V | tail -1)
    [ -n "$pkg" ] || { echo "fetch-debian-kernel-6.12: no linux-image-6.12.*-cloud-amd64-unsigned package" >&2; exit 1; }
    apt-get download -o APT::Sandbox::User=root "$pkg" >&2
fi
deb=$(ls -t linux-image-6.12.*-cloud-amd64-unsigned_*.deb | head -1)
dir="$cache/${deb%.deb}"
if [ ! -d "$dir/boot" ]; then
    rm -rf "$dir.tmp"; mkdir -p "$dir.tmp"
    dpkg-deb -x "$deb" "$dir.tmp"
    mv "$dir.tmp" "$dir"
fi
ln -sfn "$dir" "$cache/current"
echo "$dir"
