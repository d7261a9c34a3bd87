"""start_info_to_boot_params: what Linux's init_pvh_bootparams (enlighten.c) builds off Xen."""
import struct

import pytest

from pvhboot.boot.config import MemoryRegionSpec as R
from pvhboot.boot.convert import start_info_to_boot_params
from pvhboot.boot.pvh import build_memmap, build_modlist, build_start_info
from pvhboot.errors import BootError


def _guest(blobs):
    def read(addr, n):
        for base, data in blobs.items():
            if base <= addr and addr + n <= base + len(data):
                return data[addr - base : addr - base + n]
        raise AssertionError(f"read outside test memory {addr:#x}+{n}")
    return read


# Deliberately unsorted, with an entry type Linux copies unchanged (ACPI 3).
MEMMAP = [R(0x100000, 0x7F00000, 1), R(0, 0x9FC00, 1), R(0xE0000, 0x10000, 3)]


def test_conversion_follows_linux():
    si = build_start_info(version=1, cmdline_paddr=0x1_0002_0000, rsdp_paddr=0xE0000,
                          modlist_paddr=0x6040, nr_modules=2, memmap_paddr=0x6080, memmap_entries=3)
    mm = b"".join(struct.pack("<QQII", r.addr, r.size, r.type, 0) for r in MEMMAP)  # as given, unsorted
    read = _guest({0x6040: build_modlist([(0x1_0700_0000, 0x1_0000_0001), (0x5000000, 1)]), 0x6080: mm})
    bp = start_info_to_boot_params(si, read)
    raw = bytes(bp)
    assert raw[0x1E8] == 4  # 3 copied + the ISA range
    table = [struct.unpack_from("<QQI", raw, 0x2D0 + 20 * i) for i in range(4)]
    assert table == [(0x100000, 0x7F00000, 1), (0, 0x9FC00, 1), (0xE0000, 0x10000, 3), (0xA0000, 0x60000, 2)]
    assert struct.unpack_from("<I", raw, 0x228)[0] == 0x20000  # cmd_line_ptr: u32, truncated
    assert struct.unpack_from("<I", raw, 0x0C8)[0] == 0  # ext_cmd_line_ptr untouched
    assert struct.unpack_from("<II", raw, 0x218) == (0x0700_0000, 1)  # module 0, truncated to u32
    assert struct.unpack_from("<H", raw, 0x206)[0] == 0x020C
    assert raw[0x210] == 0xB0
    # Linux sets none of these: boot_flag, "HdrS", hardware_subarch, acpi_rsdp_addr, loadflags.
    assert raw[0x1FE:0x200] == bytes(2) and raw[0x202:0x206] == bytes(4)
    assert struct.unpack_from("<I", raw, 0x23C)[0] == 0 and struct.unpack_from("<Q", raw, 0x70)[0] == 0
    assert raw[0x211] == 0
    # Everything else is zero.
    touched = {0x1E8} | set(range(0x2D0, 0x2D0 + 80)) | set(range(0x228, 0x22C)) | \
        set(range(0x218, 0x220)) | {0x206, 0x207, 0x210}
    assert all(b == 0 for i, b in enumerate(raw) if i not in touched)


def test_no_module_no_ramdisk():
    si = build_start_info(version=1, memmap_paddr=0x6080, memmap_entries=1)
    bp = start_info_to_boot_params(si, _guest({0x6080: build_memmap(MEMMAP[1:2])}))
    assert (bp.hdr.ramdisk_image, bp.hdr.ramdisk_size, bp.hdr.cmd_line_ptr) == (0, 0, 0)
    assert bp.e820_entries == 2


@pytest.mark.parametrize("n,expected", [(126, 127), (127, 127), (128, 128)])
def test_isa_range_only_when_there_is_room(n, expected):
    # Linux: appended only if e820_entries < E820_MAX_ENTRIES_ZEROPAGE - 1 (127).
    mm = b"".join(struct.pack("<QQII", 0x100000 * (i + 1), 0x1000, 1, 0) for i in range(n))
    si = build_start_info(version=1, memmap_paddr=0x10000, memmap_entries=n)
    bp = start_info_to_boot_params(si, _guest({0x10000: mm}))
    assert bp.e820_entries == expected
    last = bp.e820_table[expected - 1]
    assert (last.addr == 0xA0000) == (n < 127)


def test_version_0_is_refused_like_linux_bug():
    with pytest.raises(BootError, match="version 0 with 0 memmap entries"):
        start_info_to_boot_params(build_start_info(version=0), _guest({}))


def test_bad_magic():
    si = bytearray(build_start_info(version=1, memmap_entries=1))
    si[0] ^= 1
    with pytest.raises(BootError, match="magic 0x336ec579"):
        start_info_to_boot_params(bytes(si), _guest({}))
