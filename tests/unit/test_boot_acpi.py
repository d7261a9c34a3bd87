"""ACPI tables and the AML writer: byte layout against ACPI 6.5, golden bytes, checksums."""
import ctypes

import pytest

from pvhboot.abi import acpi as A
from pvhboot.boot import aml
from pvhboot.boot.acpi import (
    build_acpi_tables,
    build_dsdt,
    build_fadt,
    build_madt,
    build_rsdp,
    checksum,
    configure_acpi,
)
from pvhboot.memory import GuestMemory
from pvhboot.memory import layout as L


def u32(b, off):
    return int.from_bytes(b[off : off + 4], "little")


def u64(b, off):
    return int.from_bytes(b[off : off + 8], "little")


# ACPI 6.5 Table 5.9 (FADT) byte offsets: the spec's numbers, not ours.
@pytest.mark.parametrize("field,offset,size", [
    ("facs", 36, 4), ("dsdt", 40, 4), ("sci_interrupt", 46, 2), ("boot_flags", 109, 2),
    ("flags", 112, 4), ("reset_register", 116, 12), ("reset_value", 128, 1),
    ("minor_revision", 131, 1), ("Xdsdt", 140, 8), ("sleep_control", 244, 12),
    ("sleep_status", 256, 12), ("hypervisor_id", 268, 8),
])
def test_fadt_offsets_match_acpi_65(field, offset, size):
    f = getattr(A.acpi_table_fadt, field)
    assert (f.offset, f.size) == (offset, size)
    assert ctypes.sizeof(A.acpi_table_fadt) == 276


def test_struct_sizes():
    assert ctypes.sizeof(A.acpi_table_rsdp) == 36
    assert ctypes.sizeof(A.acpi_table_header) == 36
    assert ctypes.sizeof(A.acpi_generic_address) == 12
    assert ctypes.sizeof(A.acpi_table_madt) == 44
    assert ctypes.sizeof(A.acpi_madt_local_apic) == 8
    assert ctypes.sizeof(A.acpi_madt_io_apic) == 12
    assert ctypes.sizeof(A.acpi_madt_interrupt_override) == 10


# DefinitionBlock ("", "DSDT", 2, "PVHBOT", "PVHBDSDT", 1) {
#     Scope (\_SB) {
#         Device (COM1) {
#             Name (_HID, EisaId ("PNP0501"))
#             Name (_UID, One)
#             Name (_STA, 0x0F)
#             Name (_CRS, ResourceTemplate () {
#                 IO (Decode16, 0x03F8, 0x03F8, 0x00, 0x08)
#                 IRQNoFlags () {4}
#             })
#         }
#     }
#     Name (_S5, Package (0x04) { 0x05, Zero, Zero, Zero })
# }
DSDT_GOLDEN = bytes.fromhex(
    "445344546c00000002e4505648424f545056484244534454010000005056484201000000"
    "103a5c5f53425f5b8232434f4d31085f4849440c41d00501085f55494401085f5354410a0f"
    "085f43525311100a0d4701f803f80300082210007900"
    "085f53355f1207040a05000000"
)


def test_dsdt_golden_bytes():
    assert build_dsdt() == DSDT_GOLDEN
    assert checksum(DSDT_GOLDEN) == 0


def test_rsdp_golden_and_checksums():
    r = build_rsdp(0xE0040)
    assert r == bytes.fromhex("52534420505452200c505648424f5402000000002400000040000e00000000008e000000")
    assert r[:8] == b"RSD PTR " and r[15] == 2 and u32(r, 20) == 36 and u64(r, 24) == 0xE0040
    assert sum(r[:20]) % 256 == 0 and sum(r) % 256 == 0


def test_madt_one_cpu_golden():
    # LAPIC {uid 0, id 0, enabled}; IOAPIC {id 0, 0xFEC00000, GSI 0}; ISO {ISA IRQ0 -> GSI2, edge/high}
    m = build_madt(1)
    assert m == bytes.fromhex(
        "415049434a000000057d505648424f545056484241504943010000005056484201000000"
        "0000e0fe00000000" "0008000001000000" "010c00000000c0fe00000000" "020a000002000000" "0500")


@pytest.mark.parametrize("cpus", [1, 2, 8, 255])
def test_madt_lists_one_enabled_lapic_per_cpu(cpus):
    m = build_madt(cpus)
    assert u32(m, 4) == len(m) == 44 + 8 * cpus + 12 + 10
    assert sum(m) % 256 == 0
    off, lapics = 44, []
    while off < len(m):
        typ, length = m[off], m[off + 1]
        if typ == 0:
            lapics.append((m[off + 2], m[off + 3], u32(m, off + 4)))
        off += length
    assert off == len(m)
    assert lapics == [(i, i, 1) for i in range(cpus)]


def test_fadt_hw_reduced_sleep_registers():
    f = A.acpi_table_fadt.from_buffer_copy(build_fadt(0xE1234))
    assert f.header.signature == b"FACP" and f.header.length == 276 and f.header.revision == 6
    assert f.flags & (1 << 20)  # HW_REDUCED_ACPI
    assert f.Xdsdt == 0xE1234 and f.dsdt == 0
    for gas, port in ((f.sleep_control, 0x3C0), (f.sleep_status, 0x3C1)):
        assert (gas.space_id, gas.bit_width, gas.bit_offset, gas.access_width, gas.address) == (1, 8, 0, 1, port)
    assert sum(build_fadt(0xE1234)) % 256 == 0


def test_s5_value_is_0x34():
    assert L.ACPI_S5_SLEEP_CONTROL_VALUE == 0x34


def test_xsdt_points_at_fadt_and_madt():
    t = build_acpi_tables(2)
    addrs = {sig: addr for sig, addr, _ in t.tables}
    xsdt = dict((s, d) for s, _, d in t.tables)["XSDT"]
    assert [u64(xsdt, 36), u64(xsdt, 44)] == [addrs["FACP"], addrs["APIC"]]
    assert u64(dict((s, d) for s, _, d in t.tables)["RSDP"], 24) == addrs["XSDT"]
    fadt = dict((s, d) for s, _, d in t.tables)["FACP"]
    assert u64(fadt, 140) == addrs["DSDT"]
    assert t.rsdp_addr == 0xE0000 and addrs["XSDT"] == 0xE0040
    assert t.end <= L.ACPI_AREA_START + L.ACPI_AREA_SIZE
    ends = sorted((a, a + len(d)) for _, a, d in t.tables)
    assert all(e <= s for (_, e), (s, _) in zip(ends, ends[1:]))
    assert build_acpi_tables(255).end <= L.ACPI_AREA_START + L.ACPI_AREA_SIZE


def test_configure_acpi_writes_tables_into_memory():
    with GuestMemory([(0, 0x100000)]) as mem:
        assert configure_acpi(mem, 2, L.RSDP_ADDR) == 0xE0000
        assert mem.read(0xE0000, 8) == b"RSD PTR "
        xsdt = u64(mem.read(0xE0000, 36), 24)
        hdr = mem.read(xsdt, 36)
        assert hdr[:4] == b"XSDT" and sum(mem.read(xsdt, u32(hdr, 4))) % 256 == 0


@pytest.mark.parametrize("body,encoded", [
    # 1 byte up to a total of 63; then (extra << 6 | total & 0xf), total >> 4, total >> 12, ...
    (0, "01"), (62, "3f"), (63, "4104"), (0x3FE - 2, "4e3f"), (0xFFF - 2, "4fff"),
    (0x1000 - 2, "810001"), (0xFFFFF - 3, "8fffff"), (0x100000, "c4000001"),
])
def test_pkg_length_encoding(body, encoded):
    # ACPI 6.5 §20.2.4: the length counts the PkgLength bytes themselves.
    assert aml.pkg_length(body).hex() == encoded


def test_aml_integers_and_names():
    assert aml.integer(0) == b"\x00" and aml.integer(1) == b"\x01"
    assert aml.integer(5) == b"\x0a\x05" and aml.integer(0x3F8) == b"\x0b\xf8\x03"
    assert aml.integer(0x12345678) == b"\x0c\x78\x56\x34\x12"
    assert aml.integer(1 << 40) == b"\x0e" + (1 << 40).to_bytes(8, "little")
    assert aml.eisa_id("PNP0501") == 0x0105D041
    assert aml.name_string("\\_SB_.COM1") == b"\\\x2e_SB_COM1"
    assert aml.name_string("_S5") == b"_S5_"
    with pytest.raises(ValueError):
        aml.name_seg("com1")
