"""hvm_start_info (start_info.h) and the Linux zero page (bootparam.h, boot.rst): byte layout at the
headers' offsets, golden bytes, round trips."""
import struct

import pytest
from boot_synth import bzimage_kernel, elf_kernel

from pvhboot.abi.e820 import E820Type
from pvhboot.boot.config import MemoryRegionSpec as R
from pvhboot.boot.linux import build_boot_params, synthesize_setup_header
from pvhboot.boot.plan import build_e820
from pvhboot.boot.pvh import build_memmap, build_modlist, build_start_info, configure_start_info, parse_start_info
from pvhboot.memory import GuestMemory

E820 = (R(0, 0x9FC00, E820Type.RAM), R(0x9FC00, 0x60400, E820Type.RESERVED),
        R(0x100000, 0x7F00000, E820Type.RAM))


def test_start_info_v1_golden_bytes():
    si = build_start_info(version=1, cmdline_paddr=0x20000, rsdp_paddr=0xE0000, modlist_paddr=0x6040,
                          nr_modules=1, memmap_paddr=0x6080, memmap_entries=3)
    # start_info.h: magic, version, flags, nr_modules (u32); modlist, cmdline, rsdp, memmap (u64);
    # memmap_entries, reserved (u32)
    assert si == struct.pack("<IIIIQQQQII", 0x336EC578, 1, 0, 1, 0x6040, 0x20000, 0xE0000, 0x6080, 3, 0)
    assert len(si) == 56 and si[:4] == bytes.fromhex("78c56e33")  # "xEn3" | 0x80


def test_start_info_v0_is_40_bytes_without_memmap():
    si = build_start_info(version=0, cmdline_paddr=0x20000)
    assert len(si) == 40 and si == struct.pack("<IIIIQQQ", 0x336EC578, 0, 0, 0, 0, 0x20000, 0)
    assert parse_start_info(si).memmap_entries == 0


def test_no_modules_means_no_modlist_pointer():
    assert build_start_info(modlist_paddr=0x6040, nr_modules=0)[16:24] == bytes(8)


def test_modlist_and_memmap_entries():
    assert build_modlist([(0x7000000, 0x1234)]) == struct.pack("<QQQQ", 0x7000000, 0x1234, 0, 0)
    mm = build_memmap(reversed(E820))  # sorted on the way out
    assert mm == b"".join(struct.pack("<QQII", r.addr, r.size, r.type, 0) for r in E820)
    with pytest.raises(ValueError, match="overlap"):
        build_memmap([R(0, 0x2000, 1), R(0x1000, 0x1000, 2)])


def test_configure_start_info_round_trip():
    with GuestMemory([(0, 0x100000)]) as mem:
        configure_start_info(mem, start_info_addr=0x6000, version=1, cmdline_addr=0x20000,
                             rsdp_addr=0xE0000, modlist_addr=0x6040, modules=[(0x3000000, 99)],
                             memmap_addr=0x6080, e820=E820)
        si = parse_start_info(mem.read(0x6000, 56))
        assert (si.magic, si.version, si.nr_modules, si.modlist_paddr, si.cmdline_paddr, si.rsdp_paddr,
                si.memmap_paddr, si.memmap_entries) == (0x336EC578, 1, 1, 0x6040, 0x20000, 0xE0000, 0x6080, 3)
        assert struct.unpack("<QQ", mem.read(0x6040, 16)) == (0x3000000, 99)
        assert struct.unpack("<QQI", mem.read(0x6080 + 48, 20)) == (0x100000, 0x7F00000, 1)


def _zp(kernel, **kw):
    hdr = kernel.bzimage.setup_header if kernel.bzimage else synthesize_setup_header()
    return bytes(build_boot_params(header=hdr, e820=kw.get("e820", E820), cmdline_addr=0x20000,
                                   initrd=kw.get("initrd", (0x7F00000, 0x12345)), rsdp_addr=0xE0000))


def test_zero_page_golden_fields_bzimage():
    zp = _zp(bzimage_kernel())
    assert len(zp) == 4096
    u8 = lambda o: zp[o]  # noqa: E731
    u16 = lambda o: struct.unpack_from("<H", zp, o)[0]  # noqa: E731
    u32 = lambda o: struct.unpack_from("<I", zp, o)[0]  # noqa: E731
    u64 = lambda o: struct.unpack_from("<Q", zp, o)[0]  # noqa: E731
    # Offsets from boot.rst / zero-page.rst.
    assert u64(0x070) == 0xE0000  # acpi_rsdp_addr
    assert (u32(0x0C0), u32(0x0C4), u32(0x0C8)) == (0, 0, 0)  # ext_ramdisk_image/size, ext_cmd_line_ptr
    assert u8(0x1E8) == 3  # e820_entries
    assert u8(0x1F1) == 4  # setup_sects copied from the file
    assert u16(0x1FE) == 0xAA55 and zp[0x202:0x206] == b"HdrS" and u16(0x206) == 0x020F
    assert u8(0x210) == 0xFF  # type_of_loader: undefined
    assert u8(0x211) == 0x81  # loadflags: LOADED_HIGH | CAN_USE_HEAP
    assert u32(0x214) == 0x100000  # code32_start
    assert (u32(0x218), u32(0x21C)) == (0x7F00000, 0x12345)  # ramdisk_image, ramdisk_size
    assert u16(0x224) == 0xFE00  # heap_end_ptr
    assert u32(0x228) == 0x20000  # cmd_line_ptr
    assert u32(0x22C) == 0x7FFFFFFF and u32(0x238) == 2047  # initrd_addr_max, cmdline_size (copied)
    assert (u32(0x23C), u64(0x240)) == (0, 0)  # hardware_subarch PC, hardware_subarch_data
    assert u64(0x258) == 0x1000000 and u32(0x260) == 0x800000  # pref_address, init_size (copied)
    assert zp[0x2D0 : 0x2D0 + 60] == b"".join(struct.pack("<QQI", r.addr, r.size, r.type) for r in E820)
    assert zp[0x2D0 + 60 : 0xD00] == bytes(0xD00 - 0x2D0 - 60)


def test_zero_page_synthesized_for_vmlinux():
    zp = _zp(elf_kernel(), initrd=None)
    assert struct.unpack_from("<H", zp, 0x1FE)[0] == 0xAA55 and zp[0x202:0x206] == b"HdrS"
    assert struct.unpack_from("<H", zp, 0x206)[0] == 0x020F
    assert struct.unpack_from("<I", zp, 0x238)[0] == 2047
    assert struct.unpack_from("<II", zp, 0x218) == (0, 0)


def test_zero_page_high_initrd_uses_ext_fields():
    zp = _zp(elf_kernel(), initrd=(0x1_2000_0000, 0x1000))
    assert struct.unpack_from("<I", zp, 0x218)[0] == 0x2000_0000 and struct.unpack_from("<I", zp, 0x0C0)[0] == 1


def test_e820_of_6gib_has_the_hole_and_high_ram():
    e = build_e820(6 << 30)
    assert [(r.addr, r.size, r.type) for r in e] == [
        (0, 0x9FC00, 1), (0x9FC00, 0xE0000 - 0x9FC00, 2), (0xE0000, 0x10000, 3), (0xF0000, 0x10000, 2),
        (0x100000, 0xC0000000 - 0x100000, 1), (0x1_0000_0000, 3 << 30, 1)]
