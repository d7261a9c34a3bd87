"""hvm_start_info and friends, from xen/include/public/arch-x86/hvm/start_info.h.

The PVH entry hands the guest %ebx = physical address of ``struct hvm_start_info``.  Version 0 ends
after ``rsdp_paddr`` (40 bytes); version 1 adds the memory map (56 bytes).  All fields are little
endian; the structure and its arrays are 8-byte aligned in guest memory.
"""
import ctypes
import enum

from . import check_layout

# "xEn3" with the high bit of the last byte set (start_info.h: XEN_HVM_START_MAGIC_VALUE).
XEN_HVM_START_MAGIC_VALUE = 0x336EC578


class SIF(enum.IntFlag):
    """start_info.h / xen.h SIF_* flags."""

    PRIVILEGED = 1 << 0
    INITDOMAIN = 1 << 1
    MULTIBOOT_MOD = 1 << 2
    MOD_START_PFN = 1 << 3
    VIRT_P2M_4TOOLS = 1 << 4


class hvm_start_info(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("magic", ctypes.c_uint32),
        ("version", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("nr_modules", ctypes.c_uint32),
        ("modlist_paddr", ctypes.c_uint64),
        ("cmdline_paddr", ctypes.c_uint64),
        ("rsdp_paddr", ctypes.c_uint64),
        # version 1 and later:
        ("memmap_paddr", ctypes.c_uint64),
        ("memmap_entries", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    ]


check_layout(
    hvm_start_info, 56, magic=0, version=4, flags=8, nr_modules=12, modlist_paddr=16,
    cmdline_paddr=24, rsdp_paddr=32, memmap_paddr=40, memmap_entries=48, reserved=52,
)
# Size of a version-0 structure: everything up to and including rsdp_paddr.
HVM_START_INFO_V0_SIZE = hvm_start_info.memmap_paddr.offset


class hvm_modlist_entry(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("paddr", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("cmdline_paddr", ctypes.c_uint64),
        ("reserved", ctypes.c_uint64),
    ]


check_layout(hvm_modlist_entry, 32, paddr=0, size=8, cmdline_paddr=16, reserved=24)


class hvm_memmap_table_entry(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("addr", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("type", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    ]


check_layout(hvm_memmap_table_entry, 24, addr=0, size=8, type=16, reserved=20)
