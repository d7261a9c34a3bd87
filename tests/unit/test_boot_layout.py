"""memory/layout.py: the fixed addresses are where the PC map and the peers put them, and the low
structures fit where they are declared without touching each other."""
import ctypes

from pvhboot.abi.bootparam import boot_params
from pvhboot.abi.start_info import hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info
from pvhboot.boot.cpu_state import GDT_ENTRIES
from pvhboot.memory import layout as L


def test_pc_and_peer_addresses():
    assert (L.HIMEM_START, L.EBDA_START, L.ISA_START_ADDRESS, L.ISA_END_ADDRESS) == \
        (0x100000, 0x9FC00, 0xA0000, 0x100000)
    assert (L.IOAPIC_ADDR, L.LAPIC_ADDR, L.MMIO_HOLE_START) == (0xFEC00000, 0xFEE00000, 0xC0000000)
    assert L.MMIO_HOLE_START <= L.BOOT_TIMER_MMIO < L.MMIO_HOLE_END
    assert L.MMIO_HOLE_START <= L.IOAPIC_ADDR < L.LAPIC_ADDR < L.MMIO_HOLE_END
    assert (L.COM1_PORT, L.COM1_IRQ, L.ACPI_SLEEP_CONTROL_PORT, L.ACPI_SLEEP_STATUS_PORT) == (0x3F8, 4, 0x3C0, 0x3C1)
    assert (L.DEBUG_EXIT_PORT, L.POST_CODE_PORT, L.BOOT_TIMER_PORT, L.BOOT_TIMER_MAGIC) == (0xF4, 0x80, 0x3F0, 123)


def test_rsdp_is_where_the_bios_scan_looks():
    # ACPI 6.5 §5.2.5.1: 16-byte boundaries in 0xE0000-0xFFFFF.
    assert 0xE0000 <= L.RSDP_ADDR < 0x100000 and L.RSDP_ADDR % 16 == 0
    assert L.ACPI_AREA_START <= L.ACPI_TABLES_START < L.BIOS_AREA_START <= L.ISA_END_ADDRESS


def test_low_structures_do_not_overlap_and_stay_below_the_ebda():
    s = ctypes.sizeof
    blobs = sorted([
        (L.BOOT_GDT_START, 8 * GDT_ENTRIES), (L.BOOT_IDT_START, L.BOOT_IDT_SIZE),
        (L.PVH_INFO_START, s(hvm_start_info)),
        (L.MODLIST_START, L.MODLIST_MAX_ENTRIES * s(hvm_modlist_entry)),
        (L.MEMMAP_START, L.MEMMAP_MAX_ENTRIES * s(hvm_memmap_table_entry)),
        (L.ZERO_PAGE_START, s(boot_params)), (L.BOOT_STACK_START, L.PAGE_SIZE),
        (L.PML4_START, L.PAGE_TABLES_END - L.PML4_START), (L.CMDLINE_START, L.CMDLINE_MAX_SIZE),
    ])
    assert blobs[0][0] >= L.REAL_MODE_IVT_END
    for (a, an), (b, _) in zip(blobs, blobs[1:]):
        assert a + an <= b, (hex(a), hex(b))
    assert blobs[-1][0] + blobs[-1][1] <= L.EBDA_START
    assert 8 * GDT_ENTRIES <= L.BOOT_GDT_MAX_SIZE
    assert L.BOOT_STACK_START < L.BOOT_STACK_POINTER <= L.PML4_START and L.BOOT_STACK_POINTER % 16 == 0
    assert L.PVH_INFO_START % 8 == L.MODLIST_START % 8 == L.MEMMAP_START % 8 == 0
    assert L.PDPTE_START == L.PML4_START + 0x1000 and L.PDE_START == L.PDPTE_START + 0x1000
