#!/usr/bin/env bash
# Install everything the three test tiers need on a fresh Debian 12 machine (run as root):
# Debian packages (oracles, QEMU for the probe-under-QEMU test and the nested rig), pvhboot itself
# with its test extras, and the Debian cloud kernel .deb (cached in .cache/, never committed).
# (bzip2, like lz4, zstd and xz-utils, is also the peer tool of bench/decompress.py.)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
pkgs=(qemu-system-x86 acpica-tools busybox-static cpio lz4 zstd xz-utils bzip2 binutils gcc make python3 \
      libpython3.11-stdlib python3-minimal libffi8 python3-seccomp gdb)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
python3 -m pip install -q --disable-pip-version-check -e "$root[test]"
"$root/scripts/fetch-debian-kernel.sh" >/dev/null
"$root/scripts/fetch-debian-kernel-6.12.sh" >/dev/null  # PHYS32_RELOC kernel for tests/rig/test_reloc.py
# Debian's gdb-minimal (no Python, fewer libraries) unpacked for the nested rig's --gdb test
# (tests/rig/test_gdb_linux.py packs it into the rig); it cannot be installed beside gdb.
gdbmin="$root/.cache/gdb-minimal"
if [ ! -x "$gdbmin/usr/bin/gdb" ]; then
    rm -rf "$gdbmin" && mkdir -p "$gdbmin"
    (cd "$gdbmin" && apt-get download -q -o APT::Sandbox::User=root gdb-minimal >&2 \
        && dpkg-deb -x gdb-minimal_*.deb .)
fi
