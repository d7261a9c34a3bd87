"""The x86-64 kernel's relocation table: what moving its *virtual* base needs (KASLR).

A bzImage's payload is ``vmlinux.bin`` followed by ``vmlinux.relocs`` (arch/x86/boot/compressed/
Makefile, ``vmlinux.bin.all``; written by arch/x86/tools/relocs.c); `pvhboot extract` keeps those
bytes after the ELF.  Read backwards from the end (arch/x86/boot/compressed/misc.c,
``handle_relocations``), as 32-bit words each holding the sign-extended kernel virtual address of
a location to patch:

* a 0, then the 32-bit relocations: ``*(u32 *)site += delta``;
* a 0, then the inverse 32-bit relocations: ``*(s32 *)site -= delta``;
* a 0, then the 64-bit relocations: ``*(u64 *)site += delta``.

(The order on disk is the reverse: 0, 64-bit..., 0, inverse..., 0, 32-bit..., end.)  The sites are
virtual addresses in the kernel map, ``virt_base + physical address`` (``__START_KERNEL_map``,
which the kernel also states in its Xen VIRT_BASE note), so the file bytes of a site are found
through the PT_LOAD segments' p_paddr (the zero-based per-CPU segment's p_vaddr is 0, unusable).
"""
from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

from ..abi.xen_notes import XEN_ELFNOTE
from .model import ElfImage

# arch/x86/include/asm/page_64_types.h: __START_KERNEL_map, the kernel image's virtual base (the
# virtual address of physical 0); used when the kernel has no VIRT_BASE note.
START_KERNEL_MAP = 0xFFFFFFFF80000000
_U64 = (1 << 64) - 1


@dataclass(frozen=True)
class Relocations:
    """A kernel's relocation sites, as *physical* addresses at its link-time placement (the site's
    virtual address minus the virtual base), by kind."""

    rel32: tuple[int, ...]  # *(u32 *) += delta
    inv32: tuple[int, ...]  # *(s32 *) -= delta
    rel64: tuple[int, ...]  # *(u64 *) += delta
    virt_base: int  # __START_KERNEL_map

    def __len__(self) -> int:
        return len(self.rel32) + len(self.inv32) + len(self.rel64)


def elf_end(elf: ElfImage) -> int | None:
    """Where the ELF proper ends in its data: the section header table is the last thing objcopy
    writes (vmlinux.bin); None without one."""
    data = elf.data
    if elf.elf_class != 64 or len(data) < 64:
        return None
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    return shoff + shentsize * shnum if shoff else None


def read_relocations(elf: ElfImage) -> Relocations | None:
    """The relocation table after ``elf`` (an x86-64 vmlinux from a bzImage payload), or None when
    there is none that holds together: every word used, every site inside a PT_LOAD's file bytes."""
    end = elf_end(elf)
    data = elf.data
    if end is None or elf.machine != "EM_X86_64" or end >= len(data) or (len(data) - end) % 4:
        return None
    note = elf.note(XEN_ELFNOTE.VIRT_BASE)
    virt_base = note.value if note is not None and isinstance(note.value, int) else START_KERNEL_MAP
    words = struct.unpack_from(f"<{(len(data) - end) // 4}i", data, end)
    tables: list[tuple[int, ...]] = []
    to_phys = (1 << 64) - virt_base
    top = len(words)  # words[top:] are read; each table ends (going down) at a 0
    for _ in range(3):
        try:
            zero = top - 1 - words[top - 1::-1].index(0) if top else -1
        except ValueError:
            return None
        if zero < 0:
            return None
        # sign-extended site - virt_base, for every word at C speed (a bad site fails the span check)
        tables.append(tuple(map(to_phys.__add__, reversed(words[zero + 1:top]))))
        top = zero
    if top:
        return None  # words left over: not (only) a relocation table
    spans = sorted((s.paddr, s.paddr + s.filesz) for s in elf.segments if s.filesz)
    for table, width in zip(tables, (4, 4, 8)):
        ordered = sorted(table)
        inside = sum(bisect.bisect_left(ordered, hi - width + 1) - bisect.bisect_left(ordered, lo)
                     for lo, hi in spans)
        if inside != len(ordered):
            return None  # a site outside every segment's file bytes (or segments overlap)
    return Relocations(tuple(tables[0]), tuple(tables[1]), tuple(tables[2]), virt_base)


def apply_relocations(relocs: Relocations, delta: int, views: list[tuple[int, memoryview]]) -> None:
    """Move the kernel's virtual base by ``delta``: patch every site in ``views``, the kernel's
    loaded bytes as (link-time physical address of the view's first byte, writable view) -- a
    segment copied to guest memory, wherever it was placed."""
    views = sorted(views, key=lambda v: v[0])
    starts = [start for start, _ in views]

    def patch(sites, fmt: str, width: int, change: int, mask: int) -> None:
        for site in sites:
            k = bisect.bisect_right(starts, site) - 1
            start, view = views[k]
            off = site - start
            if k < 0 or off + width > len(view):
                raise ValueError(f"relocation site {site:#x} is outside the loaded kernel")
            (value,) = struct.unpack_from(fmt, view, off)
            struct.pack_into(fmt, view, off, (value + change) & mask)

    patch(relocs.rel32, "<I", 4, delta, 0xFFFFFFFF)
    patch(relocs.inv32, "<I", 4, -delta, 0xFFFFFFFF)
    patch(relocs.rel64, "<Q", 8, delta, _U64)
