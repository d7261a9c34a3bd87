"""Every fixed guest-physical address and port number pvhboot uses, with one doc line each.

In the spirit of Firecracker's ``src/vmm/src/arch/x86_64/layout.rs``: nothing else in pvhboot spells
a magic address.  Addresses below 1 MiB follow the PC memory map (ACPI 6.5 §15 "System Address Map
Interfaces", Linux's Documentation/arch/x86/boot.rst "Memory layout"); the MMIO hole follows the
PC convention of a 1 GiB 32-bit window below 4 GiB that holds the IOAPIC and LAPIC.

Two different things are described here and must not be confused:

* *backing RAM* -- what :class:`pvhboot.memory.GuestMemory` maps (``0`` .. end of low RAM, and RAM
  above 4 GiB); the whole first MiB is backed so that the ACPI tables at 0xE0000 have storage;
* the *e820 map the guest is told* -- only ``[0, EBDA_START)`` of the first MiB is usable RAM; the
  EBDA, VGA window and BIOS area are reserved, the ACPI area is typed ACPI.
"""
from __future__ import annotations

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# Page sizes used for alignment and for the long-mode identity map.
PAGE_SIZE = 4 * KiB
"""Smallest page; every RAM range, the initrd and the page tables are aligned to it."""
LARGE_PAGE_SIZE = 2 * MiB
"""Page size of the linux64 identity map (PDE with PS=1)."""

# ---------------------------------------------------------------------------------------------
# Low memory (< 640 KiB): the structures a loader writes before the first instruction.
# ---------------------------------------------------------------------------------------------
REAL_MODE_IVT_END = 0x500
"""End of the real-mode IVT (0x000-0x3ff) and BIOS data area (0x400-0x4ff); left untouched."""

BOOT_GDT_START = 0x500
"""GDT for all entry protocols (as Firecracker's BOOT_GDT_OFFSET); see boot.cpu_state.build_gdt."""
BOOT_GDT_MAX_SIZE = 0x40
"""Room for 8 descriptors; pvhboot's GDT uses 6 (null, null, code, data, 16-byte TSS)."""
BOOT_IDT_START = 0x540
"""An empty IDT (8 zero bytes): any interrupt before the kernel loads its own IDT triple-faults."""
BOOT_IDT_SIZE = 8
"""Bytes of the empty IDT (limit = 7)."""

PVH_INFO_START = 0x6000
"""struct hvm_start_info (56 bytes), 8-byte aligned (start_info.h), as Firecracker's PVH_INFO_START."""
MODLIST_START = 0x6040
"""hvm_modlist_entry array (32 bytes each); module 0 is the initrd."""
MODLIST_MAX_ENTRIES = 2
"""Modules pvhboot hands over (the initrd; one spare)."""
MEMMAP_START = MODLIST_START + 32 * MODLIST_MAX_ENTRIES
"""hvm_memmap_table_entry array (24 bytes each), right after the modlist (0x6080)."""
MEMMAP_MAX_ENTRIES = (0x7000 - MEMMAP_START) // 24
"""Entries that fit before the zero page (164); the e820 pvhboot builds has at most 8."""

ZERO_PAGE_START = 0x7000
"""struct boot_params, the Linux 'zero page' (4 KiB), as Firecracker's ZERO_PAGE_START."""

BOOT_STACK_START = 0x8000
"""Bottom of the page reserved for the boot stack."""
BOOT_STACK_POINTER = 0x8FF0
"""Initial RSP for the boot vCPU (16-byte aligned, below the page tables), as Firecracker."""

PML4_START = 0x9000
"""linux64 identity map: the PML4 (one entry used)."""
PDPTE_START = 0xA000
"""linux64 identity map: the PDPT (four entries used, one per GiB)."""
PDE_START = 0xB000
"""linux64 identity map: four page directories (0xB000-0xEFFF) of 512 x 2 MiB pages = 4 GiB."""
IDENTITY_MAP_SIZE = 4 * GiB
"""Range covered by the linux64 identity map (boot.rst: at least kernel, zero page, cmdline, initrd)."""
PD_COUNT = IDENTITY_MAP_SIZE // GiB
"""Page directories needed for IDENTITY_MAP_SIZE (one per GiB)."""
PAGE_TABLES_END = PDE_START + PD_COUNT * PAGE_SIZE
"""End of the page tables (0xF000)."""

CMDLINE_START = 0x20000
"""Kernel command line (NUL-terminated), as Firecracker's CMDLINE_START."""
CMDLINE_MAX_SIZE = 0x10000
"""Room reserved for the command line; the kernel's cmdline_size is the real limit."""
COMMAND_LINE_SIZE = 2048
"""Linux x86's COMMAND_LINE_SIZE (arch/x86/include/asm/setup.h), NUL included: the limit for a vmlinux."""

EBDA_START = 0x9FC00
"""Extended BIOS Data Area (last KiB below 640 KiB): end of usable low RAM in the e820 map."""
ISA_START_ADDRESS = 0xA0000
"""Start of the ISA hole (VGA window, option ROMs, BIOS); Linux's ISA_START_ADDRESS."""
ISA_END_ADDRESS = 0x100000
"""End of the ISA hole; Linux's ISA_END_ADDRESS."""

# ---------------------------------------------------------------------------------------------
# ACPI: in the BIOS read-only area so that the legacy scan (ACPI 6.5 §5.2.5.1: 0xE0000-0xFFFFF on
# 16-byte boundaries) finds the RSDP even when the loader does not pass its address.
# ---------------------------------------------------------------------------------------------
RSDP_ADDR = 0xE0000
"""RSDP (36 bytes, revision 2), 16-byte aligned, inside the BIOS scan window."""
ACPI_TABLES_START = 0xE0040
"""XSDT, FADT, MADT, DSDT follow the RSDP, each 8-byte aligned."""
ACPI_AREA_START = RSDP_ADDR
"""Start of the e820 ACPI-typed range holding every table."""
ACPI_AREA_SIZE = 0x10000
"""64 KiB: a 255-vCPU MADT is ~2.1 KiB; typed E820 ACPI (reclaimable) [0xE0000, 0xF0000)."""
BIOS_AREA_START = ACPI_AREA_START + ACPI_AREA_SIZE
"""[0xF0000, 1 MiB): the rest of the BIOS area, typed reserved."""

# ---------------------------------------------------------------------------------------------
# High memory.
# ---------------------------------------------------------------------------------------------
HIMEM_START = 0x100000
"""Start of high memory (1 MiB): usable RAM resumes here; bzImage code32_start default."""

MMIO_HOLE_START = 0xC0000000
"""32-bit MMIO hole [3 GiB, 4 GiB): RAM beyond 3 GiB is moved above 4 GiB."""
MMIO_HOLE_END = 4 * GiB
"""End of the 32-bit MMIO hole; the second RAM range starts here."""
MMIO_HOLE_SIZE = MMIO_HOLE_END - MMIO_HOLE_START
"""Size of the 32-bit MMIO hole (1 GiB)."""
RAM_ABOVE_4G_START = MMIO_HOLE_END
"""Where RAM beyond MMIO_HOLE_START continues."""

BOOT_TIMER_MMIO = 0xD0000000
"""Firecracker's boot-timer marker: an instrumented guest writes byte 123 here (MMIO, in the hole)."""
VIRTIO_MMIO_START = 0xD0100000
"""First virtio-mmio transport window (virtio 1.2 §4.2.2), in the MMIO hole above the boot timer."""
VIRTIO_MMIO_STRIDE = 0x1000
"""One page per transport (registers 0x000-0x0ff, device config from 0x100): each its own exit zone."""
VIRTIO_MMIO_MAX_DEVICES = 8
"""Transports pvhboot creates at most: one per IOAPIC pin in VIRTIO_IRQ_FIRST.. (GSIs 16-23)."""
MAX_DISK_SIZE = 1 << 50
"""Largest raw image --disk takes (1 PiB; virtio-blk's capacity is a 64-bit sector count)."""
VIRTIO_IRQ_FIRST = 16
"""GSI of transport 0; transport i uses GSI 16 + i, IOAPIC-only pins (KVM's default routing sends
GSIs 16-23 to the IOAPIC alone), so no ISA device can claim them; the DSDT says edge, active high."""
def virtio_mmio_slot(index: int) -> tuple[int, int, int]:
    """(base, size, gsi) of virtio-mmio transport ``index``: what the bus, KVM and the DSDT all use."""
    if not 0 <= index < VIRTIO_MMIO_MAX_DEVICES:
        raise ValueError(f"virtio-mmio transport {index} out of range (at most {VIRTIO_MMIO_MAX_DEVICES})")
    return VIRTIO_MMIO_START + index * VIRTIO_MMIO_STRIDE, VIRTIO_MMIO_STRIDE, VIRTIO_IRQ_FIRST + index


IOAPIC_ADDR = 0xFEC00000
"""IOAPIC register window (KVM's in-kernel IOAPIC default; ACPI MADT, GSI base 0)."""
LAPIC_ADDR = 0xFEE00000
"""Local APIC register window (architectural default; ACPI MADT 'Local Interrupt Controller Address')."""
KVM_IDENTITY_MAP_ADDR = 0xFFFBC000
"""Page KVM_SET_IDENTITY_MAP_ADDR uses on VMX (one page below the TSS), in the MMIO hole."""
KVM_TSS_ADDR = 0xFFFBD000
"""Three pages KVM_SET_TSS_ADDR uses on VMX, as Firecracker's KVM_TSS_ADDRESS."""

MAX_MEMORY = 1 << 40
"""Largest guest RAM pvhboot plans (1 TiB)."""

# ---------------------------------------------------------------------------------------------
# I/O ports and IRQs of the VMM's devices (also described to the guest by ACPI).
# ---------------------------------------------------------------------------------------------
COM1_PORT = 0x3F8
"""16550A UART COM1 base port (8 registers)."""
COM1_PORT_COUNT = 8
"""Registers of the 16550A."""
COM1_IRQ = 4
"""ISA IRQ of COM1."""
I8042_DATA_PORT = 0x60
"""i8042 data port."""
I8042_COMMAND_PORT = 0x64
"""i8042 status/command port; command 0xFE pulses the CPU reset line."""
I8042_RESET_COMMAND = 0xFE
"""i8042 command that resets the machine (also the FADT RESET_VALUE)."""
RTC_PORT = 0x70
"""CMOS RTC index port (0x71 is the data port)."""
RTC_DATA_PORT = 0x71
"""CMOS RTC data port."""
ACPI_SLEEP_CONTROL_PORT = 0x3C0
"""FADT SLEEP_CONTROL_REG (HW-reduced ACPI, 1 byte, SystemIO): SLP_TYP<<2 | SLP_EN."""
ACPI_SLEEP_STATUS_PORT = 0x3C1
"""FADT SLEEP_STATUS_REG (HW-reduced ACPI, 1 byte, SystemIO): WAK_STS bit 7."""
ACPI_SLP_TYP_S5 = 5
"""SLP_TYP pvhboot's DSDT \\_S5 package announces; poweroff writes (5 << 2) | SLP_EN = 0x34."""
ACPI_SLP_EN = 0x20
"""SLP_EN bit of the sleep control register (ACPI 6.5 §4.8.3.7)."""
ACPI_S5_SLEEP_CONTROL_VALUE = (ACPI_SLP_TYP_S5 << 2) | ACPI_SLP_EN
"""Byte a guest writes to ACPI_SLEEP_CONTROL_PORT to power off (0x34)."""
DEBUG_EXIT_PORT = 0xF4
"""pvhboot's debug-exit port: a 32-bit write ends the VM, the value is the exit status."""
POST_CODE_PORT = 0x80
"""POST / cloud-hypervisor debug port: boot markers 0x40 (kernel start), 0x41 (user space)."""
BOOT_TIMER_PORT = 0x3F0
"""Older Firecracker boot-timer marker port (byte 123)."""
BOOT_TIMER_MAGIC = 123
"""Byte value of Firecracker's boot-timer marker."""
