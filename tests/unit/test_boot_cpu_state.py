"""Entry CPU state as data: GDT descriptors (encode/decode), page tables, and the three entries."""
import pytest

from pvhboot.boot.cpu_state import (
    BOOT_CS,
    BOOT_DS,
    BOOT_TSS,
    Segment,
    build_cpu_state,
    build_gdt,
    build_page_tables,
    gdt_entry,
    gdt_entry_from_segment,
    segment_from_gdt_entry,
)
from pvhboot.memory import layout as L

KW = dict(gdt_base=0x500, gdt_size=48, idt_base=0x540, idt_size=8)


def test_known_descriptor_values():
    # The flat descriptors every x86 loader writes (SDM Vol. 3A 3.4.5).
    assert gdt_entry(limit=0xFFFFFFFF, type=0xB, s=1, db=1, g=1) == 0x00CF9B000000FFFF
    assert gdt_entry(limit=0xFFFFFFFF, type=0xB, s=1, l=1, g=1) == 0x00AF9B000000FFFF
    assert gdt_entry(limit=0xFFFFFFFF, type=0x3, s=1, db=1, g=1) == 0x00CF93000000FFFF
    assert gdt_entry(limit=0x67, type=0xB) == 0x0000_8B00_0000_0067


@pytest.mark.parametrize("seg", [
    Segment(selector=0x10, base=0, limit=0xFFFFFFFF, type=0xB, present=1, db=1, s=1, g=1),
    Segment(selector=0x10, base=0, limit=0xFFFFFFFF, type=0xB, present=1, l=1, s=1, g=1),
    Segment(selector=0x28, base=0x12345678, limit=0xABCDE, type=0x3, present=1, dpl=3, s=1, avl=1),
    Segment(selector=0x20, base=0xFFFFF000, limit=0x67, type=0xB, present=1),
])
def test_descriptor_round_trip(seg):
    assert segment_from_gdt_entry(seg.selector, gdt_entry_from_segment(seg)) == seg


def test_descriptor_fields_at_sdm_bit_positions():
    e = gdt_entry(base=0x12345678, limit=0xABCDE, type=0x3, s=1, dpl=3, present=1, avl=1)
    assert e & 0xFFFF == 0xBCDE  # limit 15:0
    assert (e >> 16) & 0xFFFFFF == 0x345678  # base 23:0
    assert (e >> 40) & 0xFF == 0xF3  # P=1 DPL=3 S=1 type=3
    assert (e >> 48) & 0xF == 0xA  # limit 19:16
    assert (e >> 52) & 0xF == 0x1  # AVL
    assert e >> 56 == 0x12  # base 31:24


def test_page_granular_limit_must_end_in_fff():
    with pytest.raises(ValueError):
        gdt_entry(limit=0x1000, g=1)


@pytest.mark.parametrize("protocol,code", [("pvh", 0x00CF9B000000FFFF), ("linux32", 0x00CF9B000000FFFF),
                                           ("linux64", 0x00AF9B000000FFFF)])
def test_gdt_read_back(protocol, code):
    gdt = build_gdt(protocol)
    entries = [int.from_bytes(gdt[i : i + 8], "little") for i in range(0, len(gdt), 8)]
    assert entries == [0, 0, code, 0x00CF93000000FFFF, 0x00008B0000000067, 0]
    state = build_cpu_state(protocol, entry=0x100000, boot_info=0x7000, cr3=0x9000, **KW)
    assert segment_from_gdt_entry(BOOT_CS, entries[BOOT_CS // 8]) == state.cs
    assert segment_from_gdt_entry(BOOT_DS, entries[BOOT_DS // 8]) == state.ds == state.ss
    assert segment_from_gdt_entry(BOOT_TSS, entries[BOOT_TSS // 8]) == state.tr


def test_pvh_entry_state_is_exactly_the_abi():
    s = build_cpu_state("pvh", entry=0x1000850, boot_info=0x6000, **KW)
    assert (s.rip, s.gprs["rbx"], s.rflags) == (0x1000850, 0x6000, 0x2)
    assert (s.cr0, s.cr4, s.efer) == (0x1, 0, 0)
    cs = s.cs
    assert (cs.base, cs.limit, cs.type, cs.s, cs.db, cs.g, cs.l, cs.present) == (0, 0xFFFFFFFF, 0xB, 1, 1, 1, 0, 1)
    for d in (s.ds, s.es, s.ss, s.fs, s.gs):
        assert (d.base, d.limit, d.type, d.s, d.db, d.g, d.present) == (0, 0xFFFFFFFF, 3, 1, 1, 1, 1)
    tr = s.tr
    assert (tr.type, tr.s, tr.base, tr.limit, tr.present) == (11, 0, 0, 0x67, 1)
    assert (s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit) == (0x500, 47, 0x540, 7)


def test_linux32_entry_state():
    s = build_cpu_state("linux32", entry=0x100000, boot_info=0x7000, **KW)
    assert s.gprs == {"rsi": 0x7000, "rbp": 0, "rdi": 0, "rbx": 0}
    assert s.cr0 & 0x80000001 == 0x1 and s.efer == 0 and s.cs.selector == 0x10 and s.ds.selector == 0x18
    assert s.rflags & (1 << 9) == 0  # IF clear


def test_linux64_entry_state():
    s = build_cpu_state("linux64", entry=0x100200, boot_info=0x7000, cr3=0x9000, **KW)
    assert s.cr0 & 0x80000001 == 0x80000001 and s.cr4 == 0x20 and s.efer == 0x500
    assert (s.cs.l, s.cs.db, s.cs.selector, s.cr3, s.gprs["rsi"]) == (1, 0, 0x10, 0x9000, 0x7000)
    with pytest.raises(ValueError):
        build_cpu_state("linux64", entry=0x100200, boot_info=0x7000, **KW)


def test_identity_page_tables_cover_4gib():
    pt = build_page_tables(L.PML4_START, L.PDPTE_START, L.PDE_START, L.IDENTITY_MAP_SIZE)
    assert len(pt) == L.PAGE_TABLES_END - L.PML4_START == 6 * 4096
    q = lambda off: int.from_bytes(pt[off : off + 8], "little")  # noqa: E731
    assert q(0) == 0xA003 and q(8) == 0
    assert [q(0x1000 + 8 * i) for i in range(5)] == [0xB003, 0xC003, 0xD003, 0xE003, 0]
    assert q(0x2000) == 0x83 and q(0x2008) == 0x200083
    # The last 2 MiB page maps 0xFFE00000 (LAPIC and IOAPIC pages included).
    assert q(0x2000 + 8 * 2047) == 0xFFE00083
    for va in (0, 0x1000850, 0xFEC00000, 0xFFFFFFFF):  # walk: PML4 -> PDPT -> PD
        pdpt = q(8 * ((va >> 39) & 511)) & ~0xFFF
        pd = q(pdpt - L.PML4_START + 8 * ((va >> 30) & 511)) & ~0xFFF
        pde = q(pd - L.PML4_START + 8 * ((va >> 21) & 511))
        assert pde & 0x81 == 0x81 and (pde & ~0x1FFFFF) + (va & 0x1FFFFF) == va
