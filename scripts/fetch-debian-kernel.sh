#!/usr/bin/env bash
# Download the current Debian cloud kernel (the package that linux-image-cloud-amd64 depends on)
# into .cache/debian-kernel/ and unpack it there.  Never committed (.cache is git-ignored).
# Prints the unpacked directory.  Idempotent: a second run reuses what is there.
# DEBIAN_KERNEL_PACKAGE and DEBIAN_KERNEL_CACHE name another package and .cache/ folder
# (scripts/fetch-debian-kernel-6.12.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="$root/.cache/${DEBIAN_KERNEL_CACHE:-debian-kernel}"
mkdir -p "$cache"
cd "$cache"
if ! ls linux-image-*-cloud-amd64*.deb >/dev/null 2>&1; then
    [ -n "$(ls /var/lib/apt/lists/*_Packages 2>/dev/null | head -1)" ] || apt-get update -q >&2
    pkg=${DEBIAN_KERNEL_PACKAGE:-$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')}
    [ -n "$pkg" ] || { echo "fetch-debian-kernel: cannot resolve linux-image-cloud-amd64" >&2; exit 1; }
    # _apt cannot write into root-only folders; download as root without the sandbox user.
    apt-get download -o APT::Sandbox::User=root "$pkg" >&2
fi
deb=$(ls -t linux-image-*-cloud-amd64*.deb | head -1)
dir="$cache/${deb%.deb}"
if [ ! -d "$dir/boot" ]; then
    rm -rf "$dir.tmp"; mkdir -p "$dir.tmp"
    dpkg-deb -x "$deb" "$dir.tmp"
    mv "$dir.tmp" "$dir"
fi
ln -sfn "$dir" "$cache/current"
echo "$dir"
