"""The sleep control and sleep status registers of a hardware-reduced ACPI platform.

ACPI 6.5 section 4.8.3.7 (Sleep Control and Status Registers): with HW_REDUCED_ACPI set in the
FADT, OSPM enters a sleep state by writing SLP_TYPx (bits 4:2, the value from the \\_Sx package)
with SLP_EN (bit 5) to SLEEP_CONTROL_REG, after clearing WAK_STS (bit 7, write 1 to clear) in
SLEEP_STATUS_REG (Linux: drivers/acpi/acpica/hwxfsleep.c, acpi_hw_extended_sleep()).

Register the device at the FADT's SLEEP_CONTROL_REG port (0x3C0) with :data:`PIO_LENGTH` 2: offset
0 is the control register, offset 1 (0x3C1) the status register.  A write with SLP_EN and
SLP_TYP == ``s5_slp_typ`` (5, the \\_S5 value the DSDT declares; written byte 0x34) raises
``VmEvent(POWEROFF, source="acpi")``.  When ``reset_value`` is given, writing it to the control
register raises RESET (for an FADT whose RESET_REG points here, as cloud-hypervisor does with 1).
"""
from __future__ import annotations

from ..memory.layout import ACPI_SLP_EN, ACPI_SLP_TYP_S5
from .events import EventSink, VmEvent, VmEventKind

PIO_LENGTH = 2
CONTROL_OFFSET = 0  # SLEEP_CONTROL_REG (port 0x3C0)
STATUS_OFFSET = 1  # SLEEP_STATUS_REG (port 0x3C1)

SLP_EN = ACPI_SLP_EN  # ACPI_X_SLEEP_ENABLE (0x20)
SLP_TYP_SHIFT = 2
SLP_TYP_MASK = 0x1C  # ACPI_X_SLEEP_TYPE_MASK
WAK_STS = 0x80  # ACPI_X_WAKE_STATUS
S5_SLP_TYP = ACPI_SLP_TYP_S5  # the \_S5 package's first value in pvhboot's DSDT (5)


class AcpiSleepControl:
    PIO_LENGTH = PIO_LENGTH

    def __init__(self, events: EventSink, *, s5_slp_typ: int = S5_SLP_TYP, reset_value: int | None = None) -> None:
        self._events = events
        self._s5 = s5_slp_typ
        self._reset_value = reset_value
        self._status = WAK_STS  # the machine has just "woken" (power-on)
        self._control = 0

    def read(self, offset: int, size: int) -> int:
        if offset == CONTROL_OFFSET:
            return self._control & ~SLP_EN  # SLP_EN is write-only and reads as zero
        if offset == STATUS_OFFSET:
            return self._status
        return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == STATUS_OFFSET:
            self._status &= ~(value & WAK_STS)  # write 1 to clear
        elif offset == CONTROL_OFFSET:
            self._control = value
            if self._reset_value is not None and value == self._reset_value:
                self._events(VmEvent(VmEventKind.RESET, value=value, source="acpi"))
            elif value & SLP_EN and (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT == self._s5:
                self._events(VmEvent(VmEventKind.POWEROFF, value=value, source="acpi"))
            # Other sleep states (S1-S4) are not supported: the write is ignored and the guest runs on.
