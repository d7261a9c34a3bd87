"""The Linux x86 zero page: struct boot_params and struct setup_header.

Mirrors arch/x86/include/uapi/asm/bootparam.h (Linux 6.x) and Documentation/arch/x86/boot.rst.
boot_params is exactly one 4 KiB page; setup_header is 123 bytes at offset 0x1f1 of both the
zero page and the bzImage file.
"""
import ctypes
import enum

from . import check_layout
from .e820 import E820_MAX_ENTRIES_ZEROPAGE, boot_e820_entry

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64

# boot.rst: "HdrS" magic at 0x202 and 0xAA55 at 0x1fe.
HDRS_MAGIC = 0x53726448
BOOT_FLAG_MAGIC = 0xAA55
SETUP_HEADER_OFFSET = 0x1F1
# boot.rst "64-bit BOOT PROTOCOL": startup_64 is 0x200 bytes into the protected-mode kernel.
STARTUP_64_OFFSET = 0x200


class LoadFlags(enum.IntFlag):
    """setup_header.loadflags (bootparam.h)."""

    LOADED_HIGH = 1 << 0
    KASLR_FLAG = 1 << 1
    QUIET_FLAG = 1 << 5
    KEEP_SEGMENTS = 1 << 6
    CAN_USE_HEAP = 1 << 7


class XLoadFlags(enum.IntFlag):
    """setup_header.xloadflags (bootparam.h, XLF_*)."""

    XLF_KERNEL_64 = 1 << 0
    XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1
    XLF_EFI_HANDOVER_32 = 1 << 2
    XLF_EFI_HANDOVER_64 = 1 << 3
    XLF_EFI_KEXEC = 1 << 4
    XLF_5LEVEL = 1 << 5
    XLF_5LEVEL_ENABLED = 1 << 6
    XLF_MEM_ENCRYPTION = 1 << 7


class X86Subarch(enum.IntEnum):
    """hardware_subarch values (bootparam.h enum x86_hardware_subarch)."""

    X86_SUBARCH_PC = 0
    X86_SUBARCH_LGUEST = 1
    X86_SUBARCH_XEN = 2
    X86_SUBARCH_INTEL_MID = 3
    X86_SUBARCH_CE4100 = 4


# boot.rst "type_of_loader": high nibble is the loader id, 0xb = "Qemu"/generic; Linux's PVH code
# (arch/x86/platform/pvh/enlighten.c) writes (9 << 4) when running on Xen, (0xb << 4) otherwise.
LOADER_TYPE_XEN_PVH = 0x90
LOADER_TYPE_UNDEFINED_B = 0xB0
# pvhboot is not in boot.rst's registry: 0xff means "undefined", which is what boot.rst asks of
# loaders without an assigned id.
LOADER_TYPE_PVHBOOT = 0xFF


class setup_header(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("setup_sects", u8),
        ("root_flags", u16),
        ("syssize", u32),
        ("ram_size", u16),
        ("vid_mode", u16),
        ("root_dev", u16),
        ("boot_flag", u16),
        ("jump", u16),
        ("header", u32),
        ("version", u16),
        ("realmode_swtch", u32),
        ("start_sys_seg", u16),
        ("kernel_version", u16),
        ("type_of_loader", u8),
        ("loadflags", u8),
        ("setup_move_size", u16),
        ("code32_start", u32),
        ("ramdisk_image", u32),
        ("ramdisk_size", u32),
        ("bootsect_kludge", u32),
        ("heap_end_ptr", u16),
        ("ext_loader_ver", u8),
        ("ext_loader_type", u8),
        ("cmd_line_ptr", u32),
        ("initrd_addr_max", u32),
        ("kernel_alignment", u32),
        ("relocatable_kernel", u8),
        ("min_alignment", u8),
        ("xloadflags", u16),
        ("cmdline_size", u32),
        ("hardware_subarch", u32),
        ("hardware_subarch_data", u64),
        ("payload_offset", u32),
        ("payload_length", u32),
        ("setup_data", u64),
        ("pref_address", u64),
        ("init_size", u32),
        ("handover_offset", u32),
        ("kernel_info_offset", u32),
    ]


def _hdr(off: int) -> int:
    """setup_header offsets are quoted in boot.rst relative to the zero page / file start."""
    return off - SETUP_HEADER_OFFSET


check_layout(
    setup_header, 123,
    setup_sects=_hdr(0x1F1), boot_flag=_hdr(0x1FE), header=_hdr(0x202), version=_hdr(0x206),
    type_of_loader=_hdr(0x210), loadflags=_hdr(0x211), code32_start=_hdr(0x214),
    ramdisk_image=_hdr(0x218), ramdisk_size=_hdr(0x21C), cmd_line_ptr=_hdr(0x228),
    initrd_addr_max=_hdr(0x22C), kernel_alignment=_hdr(0x230), relocatable_kernel=_hdr(0x234),
    xloadflags=_hdr(0x236), cmdline_size=_hdr(0x238), hardware_subarch=_hdr(0x23C),
    hardware_subarch_data=_hdr(0x240), payload_offset=_hdr(0x248), payload_length=_hdr(0x24C),
    setup_data=_hdr(0x250), pref_address=_hdr(0x258), init_size=_hdr(0x260),
    handover_offset=_hdr(0x264), kernel_info_offset=_hdr(0x268),
)


class boot_params(ctypes.LittleEndianStructure):
    """struct boot_params ("the zero page").  Opaque sub-structures are byte arrays."""

    _pack_ = 1
    _fields_ = [
        ("screen_info", u8 * 0x40),  # 0x000
        ("apm_bios_info", u8 * 0x14),  # 0x040
        ("_pad2", u8 * 4),  # 0x054
        ("tboot_addr", u64),  # 0x058
        ("ist_info", u8 * 0x10),  # 0x060
        ("acpi_rsdp_addr", u64),  # 0x070
        ("_pad3", u8 * 8),  # 0x078
        ("hd0_info", u8 * 16),  # 0x080
        ("hd1_info", u8 * 16),  # 0x090
        ("sys_desc_table", u8 * 0x10),  # 0x0a0
        ("olpc_ofw_header", u8 * 0x10),  # 0x0b0
        ("ext_ramdisk_image", u32),  # 0x0c0
        ("ext_ramdisk_size", u32),  # 0x0c4
        ("ext_cmd_line_ptr", u32),  # 0x0c8
        ("_pad4", u8 * 112),  # 0x0cc
        ("cc_blob_address", u32),  # 0x13c
        ("edid_info", u8 * 0x80),  # 0x140
        ("efi_info", u8 * 0x20),  # 0x1c0
        ("alt_mem_k", u32),  # 0x1e0
        ("scratch", u32),  # 0x1e4
        ("e820_entries", u8),  # 0x1e8
        ("eddbuf_entries", u8),  # 0x1e9
        ("edd_mbr_sig_buf_entries", u8),  # 0x1ea
        ("kbd_status", u8),  # 0x1eb
        ("secure_boot", u8),  # 0x1ec
        ("_pad5", u8 * 2),  # 0x1ed
        ("sentinel", u8),  # 0x1ef
        ("_pad6", u8 * 1),  # 0x1f0
        ("hdr", setup_header),  # 0x1f1
        ("_pad7", u8 * (0x290 - 0x1F1 - 123)),
        ("edd_mbr_sig_buffer", u32 * 16),  # 0x290
        ("e820_table", boot_e820_entry * E820_MAX_ENTRIES_ZEROPAGE),  # 0x2d0
        ("_pad8", u8 * 48),  # 0xcd0
        ("eddbuf", u8 * (6 * 82)),  # 0xd00: struct edd_info[EDDMAXNR], 82 bytes each
        ("_pad9", u8 * 276),  # 0xeec
    ]


check_layout(
    boot_params, 4096,
    acpi_rsdp_addr=0x070, ext_ramdisk_image=0x0C0, ext_ramdisk_size=0x0C4,
    ext_cmd_line_ptr=0x0C8, cc_blob_address=0x13C, e820_entries=0x1E8, sentinel=0x1EF,
    hdr=0x1F1, edd_mbr_sig_buffer=0x290, e820_table=0x2D0, eddbuf=0xD00,
)
