"""What Linux's PVH entry builds from an hvm_start_info: the boot_params it hands to startup_64.

Mirrors ``xen_prepare_pvh()`` / ``init_pvh_bootparams(xen_guest=false)`` in
arch/x86/platform/pvh/enlighten.c, as in Linux 6.1 through 6.12 (checked against torvalds/linux at
commit 0d21364c6e8d; the 6.9+ ``xen_reserve_extra_memory`` call only runs on Xen).  Off Xen
(pvhboot is KVM) the kernel:

* zeroes pvh_bootparams;
* v1 with memmap_entries != 0: sets e820_entries = memmap_entries (a u8 field) and copies each
  hvm_memmap_table_entry's addr/size/type into e820_table as is -- no sorting, no merging;
  v0 (or no memmap) off Xen: BUG();
* if e820_entries < E820_MAX_ENTRIES_ZEROPAGE - 1, appends {ISA_START_ADDRESS 0xA0000,
  ISA_END_ADDRESS - ISA_START_ADDRESS 0x60000, E820_TYPE_RESERVED} and increments e820_entries;
* hdr.cmd_line_ptr = cmdline_paddr (truncated to the u32 field; ext_cmd_line_ptr untouched);
* module 0 (if nr_modules): hdr.ramdisk_image = paddr, hdr.ramdisk_size = size (u32 fields);
* hdr.version = 0x020c (2.12); hdr.type_of_loader = (0xb << 4) | 0 = 0xb0;
* the ACPI root pointer is *not* stored in boot_params: x86_init.acpi.get_root_pointer returns
  rsdp_paddr instead, so acpi_rsdp_addr stays 0;
* boot_flag, header ("HdrS"), hardware_subarch (X86_SUBARCH_PC = 0) and everything else stay 0.
"""
from __future__ import annotations

import ctypes
from collections.abc import Callable

from ..abi.bootparam import LOADER_TYPE_UNDEFINED_B, boot_params
from ..abi.e820 import E820_MAX_ENTRIES_ZEROPAGE, E820Type
from ..abi.start_info import XEN_HVM_START_MAGIC_VALUE, hvm_memmap_table_entry, hvm_modlist_entry
from ..errors import BootError
from ..memory import layout as L
from .pvh import parse_start_info

PVH_BOOT_PROTOCOL_VERSION = (2 << 8) | 12  # "Version 2.12 supports Xen entry point"


def start_info_to_boot_params(start_info_bytes: bytes,
                              read_guest: Callable[[int, int], bytes]) -> boot_params:
    """The boot_params Linux builds from ``start_info_bytes``; ``read_guest(addr, n)`` reads the
    memmap and modlist it points to."""
    si = parse_start_info(start_info_bytes)
    if si.magic != XEN_HVM_START_MAGIC_VALUE:
        # Linux: xen_raw_printk("Error: Unexpected magic value ..."); BUG().
        raise BootError(f"hvm_start_info magic {si.magic:#010x} is not {XEN_HVM_START_MAGIC_VALUE:#010x}")
    bp = boot_params()
    if si.version > 0 and si.memmap_entries:
        # Linux stores memmap_entries into the u8 e820_entries and copies that many entries;
        # past 128 it would write beyond e820_table, which we refuse instead of imitating.
        n = si.memmap_entries & 0xFF
        if n > E820_MAX_ENTRIES_ZEROPAGE:
            raise BootError(f"memmap_entries {si.memmap_entries} overflows Linux's e820_table "
                            f"({E820_MAX_ENTRIES_ZEROPAGE} entries)")
        esz = ctypes.sizeof(hvm_memmap_table_entry)
        raw = read_guest(si.memmap_paddr, n * esz)
        for i in range(n):
            ep = hvm_memmap_table_entry.from_buffer_copy(raw, i * esz)
            bp.e820_table[i].addr = ep.addr
            bp.e820_table[i].size = ep.size
            bp.e820_table[i].type = ep.type
        bp.e820_entries = n
    else:
        # Linux off Xen: "Non-xen guests are not supported by version 0" -> BUG().
        raise BootError(f"hvm_start_info version {si.version} with {si.memmap_entries} memmap "
                        "entries: Linux off Xen needs a version 1 memmap (it would BUG())")

    if bp.e820_entries < E820_MAX_ENTRIES_ZEROPAGE - 1:
        i = bp.e820_entries
        bp.e820_table[i].addr = L.ISA_START_ADDRESS
        bp.e820_table[i].size = L.ISA_END_ADDRESS - L.ISA_START_ADDRESS
        bp.e820_table[i].type = E820Type.RESERVED
        bp.e820_entries = i + 1
    # else: Linux prints "Warning: Can fit ISA range into e820" and goes on.

    bp.hdr.cmd_line_ptr = si.cmdline_paddr & 0xFFFFFFFF

    if si.nr_modules:
        mod = hvm_modlist_entry.from_buffer_copy(
            read_guest(si.modlist_paddr, ctypes.sizeof(hvm_modlist_entry)))
        bp.hdr.ramdisk_image = mod.paddr & 0xFFFFFFFF
        bp.hdr.ramdisk_size = mod.size & 0xFFFFFFFF

    bp.hdr.version = PVH_BOOT_PROTOCOL_VERSION
    bp.hdr.type_of_loader = LOADER_TYPE_UNDEFINED_B  # (0xb << 4) | 0: not on Xen
    return bp
