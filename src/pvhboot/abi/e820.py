"""The e820 memory map entry and types (arch/x86/include/uapi/asm/setup_data.h, struct boot_e820_entry;
arch/x86/include/asm/e820/types.h).  The PVH memmap uses the same type numbers
(xen/include/public/arch-x86/hvm/start_info.h, XEN_HVM_MEMMAP_TYPE_*)."""
import ctypes
import enum

from . import check_layout


class E820Type(enum.IntEnum):
    RAM = 1
    RESERVED = 2
    ACPI = 3
    NVS = 4
    UNUSABLE = 5
    DISABLED = 6
    PMEM = 7


class boot_e820_entry(ctypes.LittleEndianStructure):
    """struct boot_e820_entry: 20 bytes, packed."""

    _pack_ = 1
    _fields_ = [("addr", ctypes.c_uint64), ("size", ctypes.c_uint64), ("type", ctypes.c_uint32)]


check_layout(boot_e820_entry, 20, addr=0, size=8, type=16)

# arch/x86/include/uapi/asm/setup_data.h: E820_MAX_ENTRIES_ZEROPAGE
E820_MAX_ENTRIES_ZEROPAGE = 128
