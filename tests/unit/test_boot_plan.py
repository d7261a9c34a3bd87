"""plan_guest refusals (one exact error each) and load_guest writing what the plan says."""
import json
import struct

import pytest
from boot_synth import bzimage_kernel, elf_kernel

from pvhboot.boot import Blob, BootConfig, load_guest, plan_guest
from pvhboot.boot.convert import start_info_to_boot_params
from pvhboot.boot.pvh import parse_start_info
from pvhboot.errors import BootError, ConfigError, LayoutError
from pvhboot.memory import GuestMemory
from pvhboot.memory import layout as L

MiB = 1 << 20


def cfg(**kw):
    kw.setdefault("memory", 64 * MiB)
    return BootConfig(**kw)


@pytest.mark.parametrize("kernel,config,err,message", [
    (elf_kernel(), cfg(cpus=0), ConfigError, "cpus 0 out of range (1..255)"),
    (elf_kernel(), cfg(cpus=256), ConfigError, "cpus 256 out of range (1..255)"),
    (elf_kernel(), cfg(memory=16 * MiB + 512), ConfigError, "memory size 16777728 bytes is not a multiple of 4 KiB"),
    (elf_kernel(), cfg(protocol="auto"), ConfigError, "unknown protocol 'auto' (choose from pvh, linux32, linux64)"),
    (elf_kernel(), cfg(memory=1 * MiB), LayoutError,
     "memory size 1 MiB is too small: this kernel needs at least 2 MiB (it ends at 0x105000)"),
    (elf_kernel(segments=((0x1000000, 0x1000, 0x2800000),)), cfg(memory=16 * MiB), LayoutError,
     "memory size 16 MiB is too small: this kernel needs at least 56 MiB (it ends at 0x3800000)"),
    (elf_kernel(segments=((0x80000, 0x1000, 0x1000),)), cfg(), LayoutError,
     "kernel[0] at 0x80000+0x1000 is outside RAM (kernels go between 0x100000 and 0xc0000000)"),
    (elf_kernel(segments=((0xBFFFF000, 0x1000, 0x2000),)), cfg(), LayoutError,
     "kernel[0] at 0xbffff000+0x2000 is outside RAM (kernels go between 0x100000 and 0xc0000000)"),
    (elf_kernel(segments=((0x100000, 0x1000, 0x3000), (0x102000, 0x1000, 0x1000))), cfg(), LayoutError,
     "kernel[0] (0x100000+0x3000) overlaps kernel[1] (0x102000+0x1000)"),
    (elf_kernel(), cfg(cmdline="x" * 2048), BootError,
     "command line of 2048 bytes is longer than the kernel's cmdline_size 2047"),
    (bzimage_kernel(cmdline_size=100), cfg(cmdline="y" * 101, protocol="linux64"), BootError,
     "command line of 101 bytes is longer than the kernel's cmdline_size 100"),
    (elf_kernel(), cfg(cmdline="a\0b"), BootError, "the command line contains a NUL character"),
    (elf_kernel(), cfg(start_info_version=2), ConfigError, "start_info version 2 is not 0 or 1"),
])
def test_refusals(kernel, config, err, message):
    with pytest.raises(err) as e:
        plan_guest(kernel, config)
    assert str(e.value) == message


def test_no_pvh_note_names_config_pvh():
    with pytest.raises(BootError, match="CONFIG_PVH"):
        plan_guest(elf_kernel(pvh_entry=None), cfg(protocol="pvh"))


def test_linux32_needs_a_bzimage():
    with pytest.raises(BootError, match="linux32"):
        plan_guest(elf_kernel(), cfg(protocol="linux32"))


def test_initrd_that_does_not_fit_says_size_and_room():
    with pytest.raises(LayoutError) as e:
        plan_guest(elf_kernel(), cfg(memory=16 * MiB), initrd_size=15 * MiB)
    assert str(e.value) == ("initrd of 15728640 bytes does not fit: 15708160 bytes free between the "
                            "kernel's end 0x105000 and 0x1000000; give the guest at least 17 MiB of memory")


def test_initrd_above_the_kernels_limit_gets_no_memory_hint():
    k = bzimage_kernel(initrd_addr_max=0x01FFFFFF)  # 32 MiB; kernel reserves up to 0x1800000
    with pytest.raises(LayoutError) as e:
        plan_guest(k, cfg(memory=1 << 30, protocol="linux64"), initrd_size=9 * MiB)
    assert str(e.value) == ("initrd of 9437184 bytes does not fit: 8388608 bytes free between the "
                            "kernel's end 0x1800000 and 0x2000000")


def test_missing_initrd_file(tmp_path):
    with pytest.raises(ConfigError, match="initrd .*nope: No such file"):
        plan_guest(elf_kernel(), cfg(initrd=str(tmp_path / "nope")))


def test_initrd_below_initrd_addr_max_and_page_aligned():
    k = bzimage_kernel(initrd_addr_max=0x0FFFFFFF)
    p = plan_guest(k, cfg(memory=1 << 30, protocol="linux64"), initrd_size=5000)
    i = p.find(Blob.INITRD)
    assert i.addr % 4096 == 0 and i.addr + i.size <= 0x10000000 and i.addr == 0x10000000 - 8192


def test_pvh_initrd_stays_below_the_mmio_hole_with_6gib():
    p = plan_guest(elf_kernel(), cfg(memory=6 << 30), initrd_size=10 * MiB)
    i = p.find(Blob.INITRD)
    assert i.addr + i.size <= L.MMIO_HOLE_START and i.addr == L.MMIO_HOLE_START - 10 * MiB
    assert p.ram_ranges == ((0, 3 << 30), (4 << 30, 3 << 30))


def test_bzimage_reserves_the_decompressors_buffer():
    # relocatable, pref_address 16 MiB, init_size 8 MiB: the decompressor uses [16 MiB, 24 MiB).
    p = plan_guest(bzimage_kernel(), cfg(protocol="linux64"))
    k = p.find(Blob.KERNEL)
    assert (k.addr, k.addr + k.size, p.entry) == (0x100000, 0x1800000, 0x100200)
    assert plan_guest(bzimage_kernel(), cfg(protocol="linux32")).entry == 0x100000


@pytest.mark.parametrize("protocol", ["pvh", "linux32", "linux64"])
def test_probe_sized_kernel_fits_in_16mib(protocol):
    k = bzimage_kernel(init_size=0x100000, pref_address=0x100000) if protocol == "linux32" else elf_kernel()
    p = plan_guest(k, cfg(memory=16 * MiB, protocol=protocol, cpus=2, cmdline="x" * 2047))
    assert p.memory == 16 * MiB


def _load(kernel, config, tmp_path, initrd=b""):
    path = tmp_path / "initrd"
    path.write_bytes(initrd)
    config = BootConfig(**{**config.__dict__, "initrd": str(path)})
    plan = plan_guest(kernel, config)
    mem = GuestMemory(list(plan.ram_ranges))
    return plan, mem, load_guest(plan, mem)


def test_load_guest_pvh_writes_everything(tmp_path):
    k = elf_kernel(segments=((0x100000, 0x3000, 0x5000), (0x200000, 0x800, 0x800)))
    initrd = bytes(range(256)) * 40
    plan, mem, g = _load(k, cfg(memory=32 * MiB, cpus=2, cmdline="console=ttyS0 quiet"), tmp_path, initrd)
    with mem:
        assert mem.read(0x100000, 0x3000) == b"\x01" * 0x3000 and mem.read(0x103000, 0x2000) == bytes(0x2000)
        assert mem.read(0x200000, 0x800) == b"\x02" * 0x800
        i = plan.find(Blob.INITRD)
        assert mem.read(i.addr, i.size) == initrd
        si_raw = mem.read(L.PVH_INFO_START, 56)
        si = parse_start_info(si_raw)
        assert mem.read_cstring(si.cmdline_paddr) == b"console=ttyS0 quiet"
        assert si.rsdp_paddr == g.rsdp_addr == 0xE0000 and mem.read(0xE0000, 8) == b"RSD PTR "
        assert g.cpu.gprs == {"rbx": L.PVH_INFO_START} and g.cpu.rip == k.entries.pvh
        assert mem.read(L.BOOT_GDT_START + 0x10, 8) == (0x00CF9B000000FFFF).to_bytes(8, "little")
        # What Linux would make of it: our e820 plus the ISA range, module 0 as the ramdisk.
        bp = start_info_to_boot_params(si_raw, mem.read)
        e820 = [(bp.e820_table[n].addr, bp.e820_table[n].size, bp.e820_table[n].type)
                for n in range(bp.e820_entries)]
        assert e820 == [(r.addr, r.size, r.type) for r in plan.e820] + [(0xA0000, 0x60000, 2)]
        assert (bp.hdr.ramdisk_image, bp.hdr.ramdisk_size) == (i.addr, len(initrd))


def test_load_guest_linux64_writes_zero_page_and_page_tables(tmp_path):
    k = bzimage_kernel()
    plan, mem, g = _load(k, cfg(memory=64 * MiB, protocol="linux64", cmdline="ro"), tmp_path, b"\x5a" * 100)
    with mem:
        assert mem.read(0x100000, 0x4000) == b"\xAB" * 0x4000
        zp = mem.read(L.ZERO_PAGE_START, 4096)
        i = plan.find(Blob.INITRD)
        assert struct.unpack_from("<II", zp, 0x218) == (i.addr, 100)
        assert mem.read_cstring(struct.unpack_from("<I", zp, 0x228)[0]) == b"ro"
        assert zp[0x1E8] == len(plan.e820)
        assert g.cpu.cr3 == L.PML4_START and g.cpu.gprs["rsi"] == L.ZERO_PAGE_START and g.cpu.rip == 0x100200
        assert struct.unpack("<Q", mem.read(L.PDE_START + 8, 8))[0] == 0x200083


def test_load_guest_zeroes_bss_of_reused_memory(tmp_path):
    k = elf_kernel()
    plan = plan_guest(k, cfg(memory=16 * MiB))
    with GuestMemory(list(plan.ram_ranges)) as mem:
        mem.write(0x103000, b"\xff" * 0x2000)
        load_guest(plan, mem, fresh=False)
        assert mem.read(0x103000, 0x2000) == bytes(0x2000)


def test_plan_command_json(tmp_path, capsys, monkeypatch):
    from pvhboot import cli
    from pvhboot.commands import plan as plan_cmd

    monkeypatch.setattr(plan_cmd, "load_kernel", lambda path: elf_kernel(path=path))
    assert cli.main(["plan", "k", "--memory", "6G", "--cpus", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["protocol"] == "pvh" and report["entry"] == 0x100040
    assert report["e820"][-1] == {"addr": 4 << 30, "size": 3 << 30, "type": "RAM"}
    names = [p["name"] for p in report["placements"]]
    assert names[:3] == ["gdt", "idt", "start_info"] and "acpi_tables" in names
    assert cli.main(["plan", "k", "--memory", "1M"]) == 2
    assert capsys.readouterr().err.strip() == (
        "pvhboot: error: memory size 1 MiB is too small: this kernel needs at least 2 MiB (it ends at 0x105000)")
