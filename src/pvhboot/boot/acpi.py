"""ACPI tables for a HW-reduced microVM: RSDP (rev 2) -> XSDT -> FADT (-> DSDT) and MADT.

Follows ACPI 6.5: §5.2.5 RSDP, §5.2.8 XSDT, §5.2.9 FADT with HW_REDUCED_ACPI (§4.1) and the
sleep control/status registers (§4.8.3.7), §5.2.12 MADT, §5.2.11.1 DSDT.  The RSDP sits at
layout.RSDP_ADDR (0xE0000) so both the PVH rsdp_paddr and the legacy BIOS-area scan find it.

The DSDT, as ASL (what ``iasl -d`` gives back)::

    DefinitionBlock ("", "DSDT", 2, "PVHBOT", "PVHBDSDT", 1) {
        Scope (\\_SB) {
            Device (COM1) {
                Name (_HID, EisaId ("PNP0501"))
                Name (_UID, One)
                Name (_STA, 0x0F)
                Name (_CRS, ResourceTemplate () {
                    IO (Decode16, 0x03F8, 0x03F8, 0x00, 0x08)
                    IRQNoFlags () {4}
                })
            }
        }
        Name (_S5, Package (0x04) { 0x05, Zero, Zero, Zero })
        Scope (\\_SB) {                      // one per virtio-mmio transport, as QEMU's microvm
            Device (VR00) {
                Name (_HID, "LNRO0005")       // Linux's virtio_mmio_acpi_match
                Name (_UID, Zero)
                Name (_CCA, One)              // cache coherent DMA
                Name (_CRS, ResourceTemplate () {
                    Memory32Fixed (ReadWrite, 0xD0100000, 0x00000200)
                    Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) {16}
                })
            }
        }
    }

A HW-reduced guest powers off by writing (SLP_TYP << 2) | SLP_EN = (5 << 2) | 0x20 = 0x34 to the
FADT's SLEEP_CONTROL_REG (port 0x3c0), which the VMM's ACPI power device turns into a poweroff.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

from ..abi.acpi import (
    ACPI_MADT_ENABLED,
    ACPI_MADT_POLARITY_ACTIVE_HIGH,
    ACPI_MADT_TRIGGER_EDGE,
    FADT_MINOR_REVISION,
    FADT_REVISION,
    RSDP_SIGNATURE,
    RSDP_V1_LENGTH,
    AccessSize,
    AddressSpace,
    FadtFlags,
    IapcBootArch,
    MadtType,
    acpi_generic_address,
    acpi_madt_interrupt_override,
    acpi_madt_io_apic,
    acpi_madt_local_apic,
    acpi_table_fadt,
    acpi_table_header,
    acpi_table_madt,
    acpi_table_rsdp,
)
from ..memory import layout as L
from . import aml

OEM_ID = b"PVHBOT"
OEM_REVISION = 1
ASL_COMPILER_ID = b"PVHB"
ASL_COMPILER_REVISION = 1
HYPERVISOR_VENDOR_ID = int.from_bytes(b"PVHBOOT ", "little")  # FADT "Hypervisor Vendor Identity"
XSDT_REVISION = 1
MADT_REVISION = 5  # ACPI 6.3+
DSDT_REVISION = 2  # 2: AML integers are 64-bit
IOAPIC_ID = 0  # KVM's in-kernel IOAPIC reports id 0 (as Firecracker's MADT)
TABLE_ALIGN = 8
TABLES_OFFSET = L.ACPI_TABLES_START - L.RSDP_ADDR  # tables start this far after the RSDP


def checksum(data: bytes | bytearray) -> int:
    """The byte that makes ``data`` sum to zero mod 256 (the ACPI checksum rule)."""
    return (-sum(data)) & 0xFF


def _header(signature: bytes, length: int, revision: int, oem_table_id: bytes) -> acpi_table_header:
    return acpi_table_header(signature=signature, length=length, revision=revision, checksum=0,
                             oem_id=OEM_ID, oem_table_id=oem_table_id, oem_revision=OEM_REVISION,
                             asl_compiler_id=ASL_COMPILER_ID,
                             asl_compiler_revision=ASL_COMPILER_REVISION)


def _finish(table: bytearray) -> bytes:
    """Fix the SDT checksum (byte 9) once the table is complete."""
    table[9] = 0
    table[9] = checksum(table)
    return bytes(table)


VIRTIO_MMIO_HID = "LNRO0005"  # drivers/virtio/virtio_mmio.c virtio_mmio_acpi_match


def virtio_mmio_device(index: int, base: int, size: int, gsi: int) -> bytes:
    """The DSDT Device for one virtio-mmio transport (edge-triggered: KVM_IRQFD delivers edges)."""
    return aml.device(
        f"VR{index:02X}",
        aml.name("_HID", aml.string(VIRTIO_MMIO_HID)),
        aml.name("_UID", aml.integer(index)),
        aml.name("_CCA", aml.integer(1)),
        aml.name("_CRS", aml.resource_template(aml.memory32_fixed(base, size), aml.interrupt(gsi))))


def build_dsdt(virtio_mmio: tuple[tuple[int, int, int], ...] = ()) -> bytes:
    """``virtio_mmio``: (base, size, gsi) of each virtio-mmio transport the VMM creates."""
    body = (
        aml.scope("\\_SB_", aml.device(
            "COM1",
            aml.name("_HID", aml.integer(aml.eisa_id("PNP0501"))),
            aml.name("_UID", aml.integer(1)),
            aml.name("_STA", aml.integer(0x0F)),  # present, enabled, shown, functioning
            aml.name("_CRS", aml.resource_template(
                aml.io_port(L.COM1_PORT, L.COM1_PORT, 0, L.COM1_PORT_COUNT),
                aml.irq_no_flags(L.COM1_IRQ))),
        ))
        # \_S5: SLP_TYPa, SLP_TYPb, reserved, reserved (ACPI 6.5 §7.4.2); HW-reduced uses SLP_TYPa.
        + aml.name("_S5_", aml.package(aml.integer(L.ACPI_SLP_TYP_S5), aml.integer(0),
                                       aml.integer(0), aml.integer(0)))
    )
    if virtio_mmio:
        body += aml.scope("\\_SB_", *(virtio_mmio_device(i, *slot) for i, slot in enumerate(virtio_mmio)))
    hdr = _header(b"DSDT", ctypes.sizeof(acpi_table_header) + len(body), DSDT_REVISION, b"PVHBDSDT")
    return _finish(bytearray(bytes(hdr) + body))


def _gas_io8(port: int) -> acpi_generic_address:
    return acpi_generic_address(space_id=AddressSpace.SYSTEM_IO, bit_width=8, bit_offset=0,
                                access_width=AccessSize.BYTE, address=port)


def build_fadt(dsdt_addr: int) -> bytes:
    f = acpi_table_fadt()
    f.header = _header(b"FACP", ctypes.sizeof(acpi_table_fadt), FADT_REVISION, b"PVHBFACP")
    f.flags = (FadtFlags.HW_REDUCED | FadtFlags.PWR_BUTTON | FadtFlags.SLP_BUTTON
               | FadtFlags.RESET_REGISTER)
    # No VGA, no MSI (no PCI at all), OS must not touch ASPM: as Firecracker tells its guests.
    f.boot_flags = IapcBootArch.NO_VGA | IapcBootArch.NO_MSI | IapcBootArch.NO_ASPM
    # Reset through the i8042's pulse-reset command, which the VMM's i8042 handles.
    f.reset_register = _gas_io8(L.I8042_COMMAND_PORT)
    f.reset_value = L.I8042_RESET_COMMAND
    f.minor_revision = FADT_MINOR_REVISION
    f.Xdsdt = dsdt_addr  # the 32-bit DSDT field stays 0: X_DSDT wins when non-zero (§5.2.9)
    f.sleep_control = _gas_io8(L.ACPI_SLEEP_CONTROL_PORT)
    f.sleep_status = _gas_io8(L.ACPI_SLEEP_STATUS_PORT)
    f.hypervisor_id = HYPERVISOR_VENDOR_ID
    return _finish(bytearray(bytes(f)))


def build_madt(cpus: int) -> bytes:
    body = bytearray()
    for i in range(cpus):
        # ACPI processor UID i, APIC id i (the VMM sets CPUID leaf 1 / 0xB APIC ids the same way).
        body += bytes(acpi_madt_local_apic(type=MadtType.LOCAL_APIC, length=8, processor_id=i, id=i,
                                           lapic_flags=ACPI_MADT_ENABLED))
    body += bytes(acpi_madt_io_apic(type=MadtType.IO_APIC, length=12, id=IOAPIC_ID,
                                    address=L.IOAPIC_ADDR, global_irq_base=0))
    # The PIT's IRQ0 is wired to IOAPIC pin 2 (as on every PC and in KVM's irqchip routing).
    body += bytes(acpi_madt_interrupt_override(
        type=MadtType.INTERRUPT_OVERRIDE, length=10, bus=0, source_irq=0, global_irq=2,
        inti_flags=ACPI_MADT_POLARITY_ACTIVE_HIGH | ACPI_MADT_TRIGGER_EDGE))
    m = acpi_table_madt(address=L.LAPIC_ADDR, flags=0)  # flags 0: no dual-8259 (HW-reduced)
    m.header = _header(b"APIC", ctypes.sizeof(acpi_table_madt) + len(body), MADT_REVISION, b"PVHBAPIC")
    return _finish(bytearray(bytes(m) + body))


def build_xsdt(entries: list[int]) -> bytes:
    body = b"".join(a.to_bytes(8, "little") for a in entries)
    hdr = _header(b"XSDT", ctypes.sizeof(acpi_table_header) + len(body), XSDT_REVISION, b"PVHBXSDT")
    return _finish(bytearray(bytes(hdr) + body))


def build_rsdp(xsdt_addr: int) -> bytes:
    r = acpi_table_rsdp(signature=RSDP_SIGNATURE, oem_id=OEM_ID, revision=2,
                        rsdt_physical_address=0, length=ctypes.sizeof(acpi_table_rsdp),
                        xsdt_physical_address=xsdt_addr)
    raw = bytearray(bytes(r))
    raw[8] = checksum(raw[:RSDP_V1_LENGTH])
    raw[32] = checksum(raw)
    return bytes(raw)


@dataclass(frozen=True)
class AcpiTables:
    rsdp_addr: int
    tables: tuple[tuple[str, int, bytes], ...]  # (signature, address, bytes), RSDP first

    @property
    def end(self) -> int:
        return max(addr + len(data) for _, addr, data in self.tables)


def _align(x: int) -> int:
    return (x + TABLE_ALIGN - 1) // TABLE_ALIGN * TABLE_ALIGN


def build_acpi_tables(cpus: int, base: int = L.RSDP_ADDR,
                      virtio_mmio: tuple[tuple[int, int, int], ...] = ()) -> AcpiTables:
    """Every table with its address: RSDP at ``base``, then XSDT, FADT, MADT, DSDT from base+0x40."""
    if not 1 <= cpus <= 255:
        raise ValueError(f"cpus {cpus} out of range for the MADT")
    dsdt = build_dsdt(virtio_mmio)
    madt = build_madt(cpus)
    fadt_len = ctypes.sizeof(acpi_table_fadt)
    xsdt_len = ctypes.sizeof(acpi_table_header) + 2 * 8
    xsdt_addr = base + TABLES_OFFSET
    fadt_addr = _align(xsdt_addr + xsdt_len)
    madt_addr = _align(fadt_addr + fadt_len)
    dsdt_addr = _align(madt_addr + len(madt))
    fadt = build_fadt(dsdt_addr)
    xsdt = build_xsdt([fadt_addr, madt_addr])
    return AcpiTables(base, (("RSDP", base, build_rsdp(xsdt_addr)), ("XSDT", xsdt_addr, xsdt),
                             ("FACP", fadt_addr, fadt), ("APIC", madt_addr, madt),
                             ("DSDT", dsdt_addr, dsdt)))


def acpi_tables_size(cpus: int, virtio_mmio: tuple[tuple[int, int, int], ...] = ()) -> int:
    """Bytes from layout.ACPI_TABLES_START to the end of the last table (for the memory plan)."""
    t = build_acpi_tables(cpus, virtio_mmio=virtio_mmio)
    return t.end - (t.rsdp_addr + TABLES_OFFSET)


def configure_acpi(mem, cpus: int, base: int = L.RSDP_ADDR,
                   virtio_mmio: tuple[tuple[int, int, int], ...] = ()) -> int:
    """Write the tables into guest memory; returns the RSDP's address."""
    t = build_acpi_tables(cpus, base, virtio_mmio)
    for _, addr, data in t.tables:
        mem.write(addr, data)
    return t.rsdp_addr
