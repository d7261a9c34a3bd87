"""The plan and the loaded bytes for Debian's cloud kernel, against independent oracles: binutils
``readelf -lW`` for the PT_LOAD segments of the vmlinux the lz4 tool decompressed, and the files'
own bytes for what lands in guest memory."""
import re
import subprocess

from pvhboot.abi.bootparam import SETUP_HEADER_OFFSET
from pvhboot.boot import BootConfig, load_guest, plan_guest
from pvhboot.image import load_kernel
from pvhboot.memory import GuestMemory
from pvhboot.memory import layout as L

MiB = 1 << 20


def _readelf_loads(path, readelf):
    out = subprocess.run([readelf, "-lW", str(path)], capture_output=True, text=True, check=True).stdout
    loads = []
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == "LOAD":
            # Type Offset VirtAddr PhysAddr FileSiz MemSiz Flg Align
            loads.append((int(f[1], 16), int(f[3], 16), int(f[4], 16), int(f[5], 16)))
    return loads


def test_pvh_plan_matches_readelf_and_loads_file_bytes(debian_vmlinux):
    from support import require_tool

    readelf = require_tool("readelf")
    loads = _readelf_loads(debian_vmlinux, readelf)
    kernel = load_kernel(debian_vmlinux)
    config = BootConfig(memory=128 * MiB, cpus=2, cmdline="console=ttyS0", protocol="pvh")
    plan = plan_guest(kernel, config)
    placed = [(p.addr, p.size) for p in plan.placements if p.name.startswith("kernel[")]
    assert placed == [(paddr, memsz) for _, paddr, _, memsz in loads]
    notes = subprocess.run([readelf, "-nW", str(debian_vmlinux)], capture_output=True, text=True).stdout
    m = re.search(r"Xen\s+0x[0-9a-f]+\s+Unknown note type: \(0x00000012\)\s+"
                  r"description data: ((?:[0-9a-f]{2} ?)+)", notes)
    assert m, "readelf -n shows no Xen note type 0x12 (PHYS32_ENTRY)"
    assert plan.entry == int.from_bytes(bytes.fromhex(m.group(1).replace(" ", "")), "little")
    data = debian_vmlinux.read_bytes()
    with GuestMemory(list(plan.ram_ranges)) as mem:
        g = load_guest(plan, mem)
        for off, paddr, filesz, _ in loads:
            for probe in (0, filesz // 2, filesz - 64):
                assert mem.read(paddr + probe, 64) == data[off + probe : off + probe + 64]
        assert g.cpu.rip == plan.entry and g.cpu.gprs["rbx"] == L.PVH_INFO_START


def test_linux64_bzimage_zero_page_keeps_the_files_header(debian_bzimage):
    kernel = load_kernel(debian_bzimage)
    config = BootConfig(memory=256 * MiB, cmdline="console=ttyS0", protocol="linux64")
    plan = plan_guest(kernel, config)
    data = debian_bzimage.read_bytes()
    setup_size = (data[0x1F1] or 4) * 512 + 512
    with GuestMemory(list(plan.ram_ranges)) as mem:
        load_guest(plan, mem)
        assert mem.read(0x100000, 4096) == data[setup_size : setup_size + 4096]
        zp = mem.read(L.ZERO_PAGE_START, 4096)
        end = 0x202 + data[0x201]
        changed = {0x210, 0x211, 0x224, 0x225} | set(range(0x218, 0x220)) | set(range(0x228, 0x22C))
        for off in range(SETUP_HEADER_OFFSET, end):
            if off not in changed:
                assert zp[off] == data[off], hex(off)
    assert plan.entry == 0x100200
