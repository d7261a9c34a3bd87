"""The Linux boot protocol's zero page (struct boot_params) for the 32- and 64-bit entries.

Follows Documentation/arch/x86/boot.rst ("Details of header fields", "32-bit Boot Protocol",
"64-bit Boot Protocol") and zero-page.rst; the structures are :mod:`pvhboot.abi.bootparam`.  For a
bzImage the setup_header is copied from the file (boot.rst: it ends at 0x202 + the byte at 0x201)
and then the loader's fields are filled in; for a vmlinux, which has no header, one is synthesized.
"""
from __future__ import annotations

import ctypes
from collections.abc import Sequence

from ..abi.bootparam import (
    BOOT_FLAG_MAGIC,
    HDRS_MAGIC,
    LOADER_TYPE_PVHBOOT,
    LoadFlags,
    X86Subarch,
    XLoadFlags,
    boot_params,
    setup_header,
)
from ..abi.e820 import E820_MAX_ENTRIES_ZEROPAGE
from ..errors import BootError
from ..memory import layout as L
from .config import MemoryRegionSpec

# boot.rst "heap_end_ptr": the offset from the real-mode code's start of the end of the setup
# heap/stack, minus 0x200.  The 32/64-bit entries never run the real-mode setup, so the value only
# has to be legal: 0xfe00 is the largest (a full 64 KiB real-mode segment), as QEMU and other
# direct-boot loaders use.
HEAP_END_PTR = 0xFE00
# Protocol version we claim for a synthesized header (a vmlinux): 2.15, the current one.
SYNTHESIZED_VERSION = 0x020F
# x86-64 kernels' CONFIG_PHYSICAL_ALIGN default (2 MiB), for a synthesized header.
SYNTHESIZED_KERNEL_ALIGNMENT = 0x200000


def synthesize_setup_header(*, code32_start: int = L.HIMEM_START) -> setup_header:
    """A setup_header for a vmlinux: the fields a kernel's startup code reads, as header.S would set them."""
    return setup_header(
        boot_flag=BOOT_FLAG_MAGIC, header=HDRS_MAGIC, version=SYNTHESIZED_VERSION,
        code32_start=code32_start, initrd_addr_max=0x7FFFFFFF,
        kernel_alignment=SYNTHESIZED_KERNEL_ALIGNMENT, relocatable_kernel=0,
        xloadflags=XLoadFlags.XLF_KERNEL_64, cmdline_size=L.COMMAND_LINE_SIZE - 1,
    )


def build_boot_params(*, header: setup_header, e820: Sequence[MemoryRegionSpec], cmdline_addr: int,
                      initrd: tuple[int, int] | None = None, rsdp_addr: int | None = None) -> boot_params:
    """A complete zero page.  ``header`` is the kernel's (copied) or a synthesized one."""
    bp = boot_params()
    bp.hdr = header
    h = bp.hdr
    # boot.rst "type_of_loader": 0xff = undefined (pvhboot has no assigned id).
    h.type_of_loader = LOADER_TYPE_PVHBOOT
    # LOADED_HIGH: the protected-mode code is at 0x100000; CAN_USE_HEAP: heap_end_ptr is valid.
    h.loadflags = h.loadflags | LoadFlags.LOADED_HIGH | LoadFlags.CAN_USE_HEAP
    h.heap_end_ptr = HEAP_END_PTR
    h.cmd_line_ptr = cmdline_addr & 0xFFFFFFFF
    bp.ext_cmd_line_ptr = cmdline_addr >> 32
    if initrd is not None:
        addr, size = initrd
        h.ramdisk_image = addr & 0xFFFFFFFF
        h.ramdisk_size = size & 0xFFFFFFFF
        bp.ext_ramdisk_image = addr >> 32
        bp.ext_ramdisk_size = size >> 32
    else:
        h.ramdisk_image = h.ramdisk_size = 0
    # bootparam.h: X86_SUBARCH_PC, no subarch data.
    h.hardware_subarch = X86Subarch.X86_SUBARCH_PC
    h.hardware_subarch_data = 0
    if rsdp_addr:
        bp.acpi_rsdp_addr = rsdp_addr  # boot protocol 2.14+; older kernels scan the BIOS area
    if len(e820) > E820_MAX_ENTRIES_ZEROPAGE:
        raise BootError(f"e820 map of {len(e820)} entries exceeds the zero page's {E820_MAX_ENTRIES_ZEROPAGE}")
    for i, r in enumerate(sorted(e820, key=lambda r: r.addr)):
        bp.e820_table[i].addr = r.addr
        bp.e820_table[i].size = r.size
        bp.e820_table[i].type = int(r.type)
    bp.e820_entries = len(e820)
    return bp


def configure_zero_page(mem, addr: int, params: boot_params) -> None:
    """Write the zero page at ``addr`` (4 KiB)."""
    mem.write(addr, bytes(params))


def zero_page_size() -> int:
    return ctypes.sizeof(boot_params)
