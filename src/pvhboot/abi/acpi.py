"""ACPI table structures pvhboot writes: RSDP, SDT header, FADT, MADT and its entries, GAS.

Mirrors the ACPI 6.5 specification (§5.2.5.3 RSDP, §5.2.6 System Description Table Header,
§5.2.3.2 Generic Address Structure, §5.2.9 FADT (Table 5.9, revision 6, 276 bytes),
§5.2.12 MADT) and ACPICA's include/acpi/actbl.h / actbl2.h spellings.  All little endian, packed.
The XSDT is a header followed by u64 addresses and the DSDT a header followed by AML: both are
built as bytes by boot/acpi.py.
"""
import ctypes
import enum

from . import check_layout

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64

RSDP_SIGNATURE = b"RSD PTR "
# ACPI 6.5 §5.2.5.3: the checksum field covers the first 20 bytes (ACPI 1.0 part); the extended
# checksum covers the whole 36-byte structure.
RSDP_V1_LENGTH = 20


class acpi_table_rsdp(ctypes.LittleEndianStructure):
    """Root System Description Pointer, revision 2 (ACPI 2.0+), 36 bytes."""

    _pack_ = 1
    _fields_ = [
        ("signature", ctypes.c_char * 8),
        ("checksum", u8),
        ("oem_id", ctypes.c_char * 6),
        ("revision", u8),
        ("rsdt_physical_address", u32),
        ("length", u32),
        ("xsdt_physical_address", u64),
        ("extended_checksum", u8),
        ("reserved", u8 * 3),
    ]


check_layout(
    acpi_table_rsdp, 36, signature=0, checksum=8, oem_id=9, revision=15,
    rsdt_physical_address=16, length=20, xsdt_physical_address=24, extended_checksum=32,
)


class acpi_table_header(ctypes.LittleEndianStructure):
    """System Description Table header common to every table but the RSDP, 36 bytes."""

    _pack_ = 1
    _fields_ = [
        ("signature", ctypes.c_char * 4),
        ("length", u32),
        ("revision", u8),
        ("checksum", u8),
        ("oem_id", ctypes.c_char * 6),
        ("oem_table_id", ctypes.c_char * 8),
        ("oem_revision", u32),
        ("asl_compiler_id", ctypes.c_char * 4),
        ("asl_compiler_revision", u32),
    ]


check_layout(
    acpi_table_header, 36, signature=0, length=4, revision=8, checksum=9, oem_id=10,
    oem_table_id=16, oem_revision=24, asl_compiler_id=28, asl_compiler_revision=32,
)


class AddressSpace(enum.IntEnum):
    """GAS address_space_id (ACPI 6.5 Table 5.1)."""

    SYSTEM_MEMORY = 0
    SYSTEM_IO = 1
    PCI_CONFIG = 2


class AccessSize(enum.IntEnum):
    """GAS access_width (ACPI 6.5 Table 5.1)."""

    UNDEFINED = 0
    BYTE = 1
    WORD = 2
    DWORD = 3
    QWORD = 4


class acpi_generic_address(ctypes.LittleEndianStructure):
    """Generic Address Structure, 12 bytes."""

    _pack_ = 1
    _fields_ = [
        ("space_id", u8),
        ("bit_width", u8),
        ("bit_offset", u8),
        ("access_width", u8),
        ("address", u64),
    ]


check_layout(acpi_generic_address, 12, space_id=0, bit_width=1, bit_offset=2, access_width=3, address=4)


class FadtFlags(enum.IntFlag):
    """FADT Flags (ACPI 6.5 Table 5.10), ACPICA ACPI_FADT_*."""

    WBINVD = 1 << 0
    PWR_BUTTON = 1 << 4  # set = power button is a control-method device (or absent)
    SLP_BUTTON = 1 << 5
    RESET_REGISTER = 1 << 10  # RESET_REG_SUP
    HW_REDUCED = 1 << 20  # HW_REDUCED_ACPI


class IapcBootArch(enum.IntFlag):
    """FADT IAPC_BOOT_ARCH (ACPI 6.5 Table 5.11)."""

    LEGACY_DEVICES = 1 << 0
    I8042 = 1 << 1
    NO_VGA = 1 << 2
    NO_MSI = 1 << 3
    NO_ASPM = 1 << 4
    NO_CMOS_RTC = 1 << 5


FADT_REVISION = 6
FADT_MINOR_REVISION = 5  # ACPI 6.5


class acpi_table_fadt(ctypes.LittleEndianStructure):
    """Fixed ACPI Description Table, revision 6 (ACPI 6.x), 276 bytes."""

    _pack_ = 1
    _fields_ = [
        ("header", acpi_table_header),
        ("facs", u32),
        ("dsdt", u32),
        ("model", u8),
        ("preferred_profile", u8),
        ("sci_interrupt", u16),
        ("smi_command", u32),
        ("acpi_enable", u8),
        ("acpi_disable", u8),
        ("s4_bios_request", u8),
        ("pstate_control", u8),
        ("pm1a_event_block", u32),
        ("pm1b_event_block", u32),
        ("pm1a_control_block", u32),
        ("pm1b_control_block", u32),
        ("pm2_control_block", u32),
        ("pm_timer_block", u32),
        ("gpe0_block", u32),
        ("gpe1_block", u32),
        ("pm1_event_length", u8),
        ("pm1_control_length", u8),
        ("pm2_control_length", u8),
        ("pm_timer_length", u8),
        ("gpe0_block_length", u8),
        ("gpe1_block_length", u8),
        ("gpe1_base", u8),
        ("cst_control", u8),
        ("c2_latency", u16),
        ("c3_latency", u16),
        ("flush_size", u16),
        ("flush_stride", u16),
        ("duty_offset", u8),
        ("duty_width", u8),
        ("day_alarm", u8),
        ("month_alarm", u8),
        ("century", u8),
        ("boot_flags", u16),  # IAPC_BOOT_ARCH
        ("reserved", u8),
        ("flags", u32),
        ("reset_register", acpi_generic_address),
        ("reset_value", u8),
        ("arm_boot_flags", u16),
        ("minor_revision", u8),
        ("Xfacs", u64),
        ("Xdsdt", u64),
        ("xpm1a_event_block", acpi_generic_address),
        ("xpm1b_event_block", acpi_generic_address),
        ("xpm1a_control_block", acpi_generic_address),
        ("xpm1b_control_block", acpi_generic_address),
        ("xpm2_control_block", acpi_generic_address),
        ("xpm_timer_block", acpi_generic_address),
        ("xgpe0_block", acpi_generic_address),
        ("xgpe1_block", acpi_generic_address),
        ("sleep_control", acpi_generic_address),
        ("sleep_status", acpi_generic_address),
        ("hypervisor_id", u64),
    ]


check_layout(
    acpi_table_fadt, 276, facs=36, dsdt=40, sci_interrupt=46, pm1a_event_block=56,
    boot_flags=109, flags=112, reset_register=116, reset_value=128, arm_boot_flags=129,
    minor_revision=131, Xfacs=132, Xdsdt=140, xpm1a_event_block=148, xgpe1_block=232,
    sleep_control=244, sleep_status=256, hypervisor_id=268,
)


class MadtType(enum.IntEnum):
    """MADT Interrupt Controller Structure types (ACPI 6.5 Table 5.45)."""

    LOCAL_APIC = 0
    IO_APIC = 1
    INTERRUPT_OVERRIDE = 2
    NMI_SOURCE = 3
    LOCAL_APIC_NMI = 4


MADT_PCAT_COMPAT = 1  # MADT flags bit 0: a dual-8259 PIC is present (KVM's irqchip has one)
ACPI_MADT_ENABLED = 1  # Local APIC flags bit 0: processor usable
# MPS INTI flags (ACPI 6.5 Table 5.50): polarity bits 1:0, trigger mode bits 3:2.
ACPI_MADT_POLARITY_ACTIVE_HIGH = 1
ACPI_MADT_TRIGGER_EDGE = 1 << 2


class acpi_table_madt(ctypes.LittleEndianStructure):
    """MADT fixed part: header, Local Interrupt Controller Address, flags; 44 bytes."""

    _pack_ = 1
    _fields_ = [("header", acpi_table_header), ("address", u32), ("flags", u32)]


check_layout(acpi_table_madt, 44, address=36, flags=40)


class acpi_madt_local_apic(ctypes.LittleEndianStructure):
    """Processor Local APIC structure (type 0), 8 bytes."""

    _pack_ = 1
    _fields_ = [("type", u8), ("length", u8), ("processor_id", u8), ("id", u8), ("lapic_flags", u32)]


check_layout(acpi_madt_local_apic, 8, type=0, length=1, processor_id=2, id=3, lapic_flags=4)


class acpi_madt_io_apic(ctypes.LittleEndianStructure):
    """I/O APIC structure (type 1), 12 bytes."""

    _pack_ = 1
    _fields_ = [
        ("type", u8), ("length", u8), ("id", u8), ("reserved", u8), ("address", u32),
        ("global_irq_base", u32),
    ]


check_layout(acpi_madt_io_apic, 12, id=2, address=4, global_irq_base=8)


class acpi_madt_interrupt_override(ctypes.LittleEndianStructure):
    """Interrupt Source Override structure (type 2), 10 bytes."""

    _pack_ = 1
    _fields_ = [
        ("type", u8), ("length", u8), ("bus", u8), ("source_irq", u8), ("global_irq", u32),
        ("inti_flags", u16),
    ]


check_layout(acpi_madt_interrupt_override, 10, bus=2, source_irq=3, global_irq=4, inti_flags=8)
