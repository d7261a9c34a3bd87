"""Synthetic kernels for the boot/ tests: KernelImage objects built directly (no parser), so the
boot writers are tested on exactly the facts they are given."""
from __future__ import annotations

import ctypes

from pvhboot.abi.bootparam import BOOT_FLAG_MAGIC, HDRS_MAGIC, SETUP_HEADER_OFFSET, setup_header
from pvhboot.abi.xen_notes import XEN_ELFNOTE
from pvhboot.image.bzimage import declared_setup_header
from pvhboot.image.model import BzImage, ElfImage, Entries, KernelImage, LoadSegment, XenNote

PVH_ENTRY = 0x100040
MiB = 1 << 20


def elf_kernel(segments=((0x100000, 0x3000, 0x5000),), pvh_entry: int | None = PVH_ENTRY,
               e_entry: int = 0x100000, path: str = "synthetic-vmlinux",
               reloc: tuple[int, ...] | None = None) -> KernelImage:
    """A vmlinux-like image: each (paddr, filesz, memsz) segment's file bytes are a recognisable
    pattern (byte = segment index + 1) at consecutive file offsets.  ``reloc``: the values of a
    PHYS32_RELOC note (align, min, max)."""
    data = bytearray(0x1000)
    segs = []
    for i, (paddr, filesz, memsz) in enumerate(segments):
        off = len(data)
        data += bytes([i + 1]) * filesz
        segs.append(LoadSegment(paddr=paddr, vaddr=paddr, offset=off, filesz=filesz, memsz=memsz))
    elf = ElfImage(data=bytes(data), elf_class=64, machine="EM_X86_64", e_entry=e_entry,
                   segments=tuple(segs),
                   xen_notes=() if reloc is None else (XenNote(XEN_ELFNOTE.PHYS32_RELOC, "PHYS32_RELOC", reloc),))
    return KernelImage(path=path, format="elf",
                       entries=Entries(pvh=pvh_entry, linux64=e_entry), elf=elf)


def bzimage_kernel(pm_size: int = 0x4000, *, version: int = 0x020F, init_size: int = 0x800000,
                   pref_address: int = 0x1000000, cmdline_size: int = 2047,
                   initrd_addr_max: int = 0x7FFFFFFF, xloadflags: int = 0x1,
                   relocatable: int = 1, payload: ElfImage | None = None,
                   path: str = "synthetic-bzImage") -> KernelImage:
    setup_sects = 4
    setup_size = (setup_sects + 1) * 512
    hdr = setup_header(setup_sects=setup_sects, boot_flag=BOOT_FLAG_MAGIC, jump=0x66EB,
                       header=HDRS_MAGIC, version=version, loadflags=0x1, code32_start=0x100000,
                       initrd_addr_max=initrd_addr_max, kernel_alignment=0x200000,
                       relocatable_kernel=relocatable, min_alignment=21, xloadflags=xloadflags,
                       cmdline_size=cmdline_size, pref_address=pref_address, init_size=init_size,
                       payload_offset=0x3a0, payload_length=0x100)
    data = bytearray(setup_size + pm_size)
    data[SETUP_HEADER_OFFSET : SETUP_HEADER_OFFSET + ctypes.sizeof(hdr)] = bytes(hdr)
    # 0x201 is the jump's second byte: the header ends at 0x202 + 0x66 = 0x268.
    data[setup_size:] = b"\xAB" * pm_size
    payload = payload or elf_kernel(segments=((0x1000000, 0x2000, 0x3000),), pvh_entry=0x1000040,
                                    e_entry=0x1000000).elf
    bz = BzImage(data=bytes(data), header={"version": version},
                 setup_header=declared_setup_header(data, hdr), boot_protocol=(version >> 8, version & 0xFF),
                 setup_size=setup_size, compression="lz4", payload=payload)
    return KernelImage(path=path, format="bzimage",
                       entries=Entries(pvh=0x1000040, linux32=0x100000,
                                       linux64=0x100200 if xloadflags & 1 else None),
                       elf=payload, bzimage=bz)
