"""The virtual half of --kaslr: the relocation table after a vmlinux (image/relocs.py) and the plan
that moves the kernel's virtual base with it (boot/plan.py, load_guest)."""
import struct

import pytest
from boot_synth import elf_kernel

from pvhboot.abi.xen_notes import XEN_ELFNOTE
from pvhboot.boot import Blob, BootConfig, load_guest, plan_guest
from pvhboot.image.model import ElfImage, KernelImage, LoadSegment, XenNote
from pvhboot.image.relocs import START_KERNEL_MAP, apply_relocations, read_relocations
from pvhboot.memory import GuestMemory

MiB = 1 << 20
LINK = 0x1000000


def vmlinux_with_relocs(rel32=(), inv32=(), rel64=(), trailer=None, reloc_note=True) -> KernelImage:
    """A 64-bit 'vmlinux' of one 0x2000-byte segment at 16 MiB whose file bytes count up (u32 i at
    offset 4 i), then its (empty) section header table, which ends the ELF as in vmlinux.bin, then a
    relocation table for sites given as physical addresses."""
    header = bytearray(64)
    header[:4] = b"\x7fELF"
    seg_off = len(header)
    seg = b"".join(struct.pack("<I", i) for i in range(0x800))
    struct.pack_into("<Q", header, 0x28, seg_off + len(seg))  # e_shoff
    struct.pack_into("<HH", header, 0x3A, 64, 2)  # e_shentsize, e_shnum
    body = bytes(128)  # the 2 section headers
    virt = lambda sites: [((START_KERNEL_MAP + s) & 0xFFFFFFFF) for s in sites]  # noqa: E731 (sign-extended)
    words = [0, *virt(rel64), 0, *virt(inv32), 0, *virt(rel32)]
    table = trailer if trailer is not None else struct.pack(f"<{len(words)}I", *words)
    data = bytes(header) + seg + body + table
    notes = (XenNote(XEN_ELFNOTE.PHYS32_RELOC, "PHYS32_RELOC", (0x200000, LINK, 0x3FFFFFFF)),) if reloc_note else ()
    elf = ElfImage(data=data, elf_class=64, machine="EM_X86_64", e_entry=LINK,
                   segments=(LoadSegment(paddr=LINK, vaddr=START_KERNEL_MAP + LINK, offset=seg_off,
                                         filesz=len(seg), memsz=0x3000),),
                   xen_notes=notes + (XenNote(XEN_ELFNOTE.PHYS32_ENTRY, "PHYS32_ENTRY", LINK + 0x40),))
    from pvhboot.image.model import Entries

    return KernelImage(path="synthetic-vmlinux", format="elf", entries=Entries(pvh=LINK + 0x40), elf=elf)


def test_table_is_read_backwards_by_kind():
    k = vmlinux_with_relocs(rel32=(LINK + 8, LINK + 4), inv32=(LINK + 16,), rel64=(LINK + 32,))
    r = read_relocations(k.elf)
    assert (r.rel32, r.inv32, r.rel64, r.virt_base) == ((LINK + 4, LINK + 8), (LINK + 16,), (LINK + 32,),
                                                       START_KERNEL_MAP)
    assert len(r) == 4


@pytest.mark.parametrize("why,kw", [
    ("no table", {"trailer": b""}),
    ("words left before the table", {"trailer": struct.pack("<5I", 7, 0, 0, 0, 0)[:-4] + b"\0\0\0\0"}),
    ("a site outside the segment", {"rel32": (LINK + 0x2000,)}),
    ("a 64-bit site running past the segment", {"rel64": (LINK + 0x2000 - 4,)}),
    ("a ragged tail", {"trailer": b"\0\0\0\0\0\0\0\0\0\0\0\0\0"}),
])
def test_no_table_that_does_not_hold_together(why, kw):
    assert read_relocations(vmlinux_with_relocs(**kw).elf) is None, why


def test_apply_patches_each_kind():
    k = vmlinux_with_relocs(rel32=(LINK + 8,), inv32=(LINK + 16,), rel64=(LINK + 32,))
    r = read_relocations(k.elf)
    seg = k.elf.segments[0]
    view = memoryview(bytearray(k.elf.data[seg.offset:seg.offset + seg.filesz]))
    apply_relocations(r, 0x200000, [(LINK, view)])
    u32 = lambda o: struct.unpack_from("<I", view, o)[0]  # noqa: E731
    assert (u32(8), u32(16), struct.unpack_from("<Q", view, 32)[0]) == (2 + 0x200000, (4 - 0x200000) & 0xFFFFFFFF,
                                                                       (9 << 32 | 8) + 0x200000)
    assert u32(12) == 3  # untouched


def test_kaslr_moves_the_virtual_base_within_the_window_and_replays():
    k = vmlinux_with_relocs(rel32=(LINK + 8,), rel64=(LINK + 32,))
    offsets = set()
    for seed in range(40):
        w = plan_guest(k, BootConfig(memory=256 * MiB, kaslr_seed=seed)).kernel_placement
        assert w.virt_offset % 0x200000 == 0 and LINK + 0x3000 + w.virt_offset <= 0x40000000
        assert w.relocations is not None
        offsets.add(w.virt_offset)
    assert len(offsets) > 20
    a = plan_guest(k, BootConfig(memory=256 * MiB, kaslr_seed=5)).kernel_placement
    assert a == plan_guest(k, BootConfig(memory=256 * MiB, kaslr_seed=5)).kernel_placement


def test_no_virtual_shift_without_a_table_or_for_an_explicit_address():
    assert plan_guest(elf_kernel(segments=((LINK, 0x1000, 0x1000),), pvh_entry=LINK,
                                 reloc=(0x200000, LINK, 0x3FFFFFFF)),
                      BootConfig(memory=256 * MiB, kaslr_seed=1)).kernel_placement.virt_offset == 0
    k = vmlinux_with_relocs(rel32=(LINK + 8,))
    assert plan_guest(k, BootConfig(memory=256 * MiB, load_addr=0x4000000)).kernel_placement.virt_offset == 0


def test_load_guest_applies_the_table_where_the_kernel_went():
    k = vmlinux_with_relocs(rel32=(LINK + 8,), inv32=(LINK + 16,), rel64=(LINK + 32,))
    plan = plan_guest(k, BootConfig(memory=256 * MiB, kaslr_seed=3))
    w = plan.kernel_placement
    assert w.virt_offset  # seed 3 draws a non-zero shift here
    with GuestMemory(list(plan.ram_ranges)) as mem:
        g = load_guest(plan, mem)
        base = plan.find(Blob.KERNEL).addr
        assert base == w.load_addr and g.cpu.rip == base + 0x40
        u32 = lambda o: struct.unpack("<I", mem.read(base + o, 4))[0]  # noqa: E731
        assert u32(8) == 2 + w.virt_offset and u32(16) == (4 - w.virt_offset) & 0xFFFFFFFF
        assert struct.unpack("<Q", mem.read(base + 32, 8))[0] == (9 << 32 | 8) + w.virt_offset
        assert u32(12) == 3


def test_inspect_counts_the_table():
    from pvhboot.commands.inspect import build_report

    k = vmlinux_with_relocs(rel32=(LINK + 8,), inv32=(LINK + 16,), rel64=(LINK + 32, LINK + 40))
    assert build_report(k)["relocations"] == {"rel32": 1, "inv32": 1, "rel64": 2}
    assert build_report(vmlinux_with_relocs(trailer=b""))["relocations"] is None
