#!/usr/bin/env bash
# Download Debian's 6.12 cloud kernel (bookworm-security's newest
# linux-image-6.12.*+deb12-cloud-amd64-unsigned) into .cache/debian-kernel-6.12/ and unpack it there,
# with scripts/fetch-debian-kernel.sh.  Its vmlinux carries the Xen PHYS32_RELOC note (6.1's does
# not): tests/rig/test_reloc.py boots it at addresses other than its link address.  Prints the
# unpacked directory.  Idempotent.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[ -n "$(ls /var/lib/apt/lists/*_Packages* 2>/dev/null | head -1)" ] || apt-get update -q >&2
pkg=$(apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$' \
      | awk '{print $1}' | sort -V | tail -1)
[ -n "$pkg" ] || { echo "fetch-debian-kernel-6.12: no linux-image-6.12.*-cloud-amd64-unsigned package" >&2; exit 1; }
DEBIAN_KERNEL_PACKAGE="$pkg" DEBIAN_KERNEL_CACHE=debian-kernel-6.12 exec "$here/fetch-debian-kernel.sh"
