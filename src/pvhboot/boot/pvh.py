"""PVH boot structures: hvm_start_info with its module list and memory map.

Layout and magic per Xen's xen/include/public/arch-x86/hvm/start_info.h (declared once in
:mod:`pvhboot.abi.start_info`); entry rules per xen docs/misc/pvh.pandoc.  Version 0 stops after
rsdp_paddr (40 bytes); version 1 adds memmap_paddr/memmap_entries (56 bytes).
"""
from __future__ import annotations

import ctypes
from collections.abc import Iterable, Sequence

from ..abi.start_info import (
    HVM_START_INFO_V0_SIZE,
    XEN_HVM_START_MAGIC_VALUE,
    hvm_memmap_table_entry,
    hvm_modlist_entry,
    hvm_start_info,
)
from .config import MemoryRegionSpec


def build_start_info(*, version: int = 1, cmdline_paddr: int = 0, rsdp_paddr: int = 0,
                     modlist_paddr: int = 0, nr_modules: int = 0, memmap_paddr: int = 0,
                     memmap_entries: int = 0, flags: int = 0) -> bytes:
    """The hvm_start_info bytes (40 for version 0, 56 for version 1)."""
    if version not in (0, 1):
        raise ValueError(f"hvm_start_info version {version} is not 0 or 1")
    si = hvm_start_info(magic=XEN_HVM_START_MAGIC_VALUE, version=version, flags=flags,
                        nr_modules=nr_modules, modlist_paddr=modlist_paddr if nr_modules else 0,
                        cmdline_paddr=cmdline_paddr, rsdp_paddr=rsdp_paddr)
    if version >= 1:
        si.memmap_paddr = memmap_paddr
        si.memmap_entries = memmap_entries
        return bytes(si)
    return bytes(si)[:HVM_START_INFO_V0_SIZE]


def build_modlist(modules: Iterable[tuple[int, int]]) -> bytes:
    """hvm_modlist_entry per (paddr, size); no per-module command line."""
    return b"".join(bytes(hvm_modlist_entry(paddr=p, size=s, cmdline_paddr=0)) for p, s in modules)


def build_memmap(e820: Sequence[MemoryRegionSpec]) -> bytes:
    """hvm_memmap_table_entry per region (same type numbers as e820), sorted by address."""
    regions = sorted(e820, key=lambda r: r.addr)
    for a, b in zip(regions, regions[1:]):
        if a.addr + a.size > b.addr:
            raise ValueError(f"memmap entries {a.addr:#x}+{a.size:#x} and {b.addr:#x} overlap")
    return b"".join(bytes(hvm_memmap_table_entry(addr=r.addr, size=r.size, type=int(r.type)))
                    for r in regions)


def configure_start_info(mem, *, start_info_addr: int, version: int, cmdline_addr: int,
                         rsdp_addr: int | None, modlist_addr: int,
                         modules: Sequence[tuple[int, int]], memmap_addr: int,
                         e820: Sequence[MemoryRegionSpec]) -> bytes:
    """Write start_info (+ modlist, + memmap for v1) into guest memory; returns start_info's bytes."""
    if modules:
        mem.write(modlist_addr, build_modlist(modules))
    if version >= 1:
        mem.write(memmap_addr, build_memmap(e820))
    si = build_start_info(version=version, cmdline_paddr=cmdline_addr, rsdp_paddr=rsdp_addr or 0,
                          modlist_paddr=modlist_addr, nr_modules=len(modules),
                          memmap_paddr=memmap_addr if version >= 1 else 0,
                          memmap_entries=len(e820) if version >= 1 else 0)
    mem.write(start_info_addr, si)
    return si


def parse_start_info(raw: bytes) -> hvm_start_info:
    """Read back a (v0 or v1) start_info; a v0 structure reads with zero memmap fields."""
    return hvm_start_info.from_buffer_copy(bytes(raw[: ctypes.sizeof(hvm_start_info)]).ljust(
        ctypes.sizeof(hvm_start_info), b"\0"))
