"""Evidence tool for tests/rig/test_reloc.py (runs inside the rig, or on the host): move an x86-64
vmlinux's *virtual* base the way the bzImage decompressor does for KASLR, so that pvhboot's PVH
boot of the result shows whether the PVH entry path tolerates a virtual shift.

    python3 apply_relocs.py VMLINUX DELTA OUT

A bzImage's payload is vmlinux.bin followed by vmlinux.relocs (arch/x86/boot/compressed/Makefile:
vmlinux.bin.all); `pvhboot extract` keeps those bytes after the ELF.  Read backwards from the end
(arch/x86/boot/compressed/misc.c, handle_relocations): 32-bit entries, each the sign-extended
kernel virtual address of a location to patch -- first the 32-bit relocations (*u32 += delta) up to
a 0, then the inverse 32-bit ones (*s32 -= delta) up to a 0, then the 64-bit ones (*u64 += delta)
up to a 0.  Here the locations are found in the file through the PT_LOAD segments (vaddr ->
offset) instead of in a decompressed memory image.  Prints how many of each were applied.
"""
from __future__ import annotations

import struct
import sys

# arch/x86/include/asm/page_64_types.h: the kernel image's virtual base (its physical 0).
START_KERNEL_MAP = 0xFFFFFFFF80000000


def _segments(data: bytes):
    """(kernel virtual address, file offset, file size) per PT_LOAD.  The virtual address is
    START_KERNEL_MAP + p_paddr, as the relocation sites are (the zero-based per-CPU segment's
    p_vaddr is 0, so p_vaddr cannot be used)."""
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, p_paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1 and p_filesz:  # PT_LOAD
            yield START_KERNEL_MAP + p_paddr, p_offset, p_filesz


def elf_end(data: bytes) -> int:
    """End of the ELF proper: the section header table is the last thing objcopy writes."""
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    return shoff + shentsize * shnum


def reloc_tables(data: bytes) -> tuple[list[int], list[int], list[int]]:
    """(32-bit, inverse 32-bit, 64-bit) relocation sites as 64-bit virtual addresses."""
    end = elf_end(data)
    words = struct.unpack_from(f"<{(len(data) - end) // 4}i", data, end)
    tables: list[list[int]] = [[], [], []]
    i, t = len(words) - 1, 0
    while t < 3:
        if i < 0:
            raise ValueError("no relocation table after the ELF (built without CONFIG_X86_NEED_RELOCS?)")
        w = words[i]
        i -= 1
        if w == 0:
            t += 1
        else:
            tables[t].append(w & 0xFFFFFFFFFFFFFFFF)  # sign-extended to 64 bits
    return tables[0], tables[1], tables[2]


def apply(data: bytes, delta: int) -> tuple[bytearray, tuple[int, int, int]]:
    out = bytearray(data[: elf_end(data)])
    segs = list(_segments(data))

    def offset(vaddr: int) -> int:
        for va, off, size in segs:
            if va <= vaddr < va + size:
                return off + (vaddr - va)
        raise ValueError(f"relocation site {vaddr:#x} is in no PT_LOAD segment's file bytes")

    r32, inv32, r64 = reloc_tables(data)
    for va in r32:
        o = offset(va)
        struct.pack_into("<I", out, o, (struct.unpack_from("<I", out, o)[0] + delta) & 0xFFFFFFFF)
    for va in inv32:
        o = offset(va)
        struct.pack_into("<I", out, o, (struct.unpack_from("<I", out, o)[0] - delta) & 0xFFFFFFFF)
    for va in r64:
        o = offset(va)
        struct.pack_into("<Q", out, o, (struct.unpack_from("<Q", out, o)[0] + delta) & 0xFFFFFFFFFFFFFFFF)
    return out, (len(r32), len(inv32), len(r64))


def main(argv: list[str]) -> int:
    src, delta, dst = argv[1], int(argv[2], 0), argv[3]
    with open(src, "rb") as f:
        data = f.read()
    out, counts = apply(data, delta)
    with open(dst, "wb") as f:
        f.write(out)
    print(f"RELOCS-APPLIED delta={delta:#x} r32={counts[0]} inv32={counts[1]} r64={counts[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
