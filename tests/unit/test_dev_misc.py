"""devices/: i8042 reset, CMOS RTC, ACPI sleep control, debug exit, boot markers."""
from __future__ import annotations

import calendar

import pytest

from pvhboot.devices.acpi_pm import AcpiSleepControl
from pvhboot.devices.boot_markers import DebugPort80, FirecrackerBootTimer, debug_port_stage
from pvhboot.devices.bus import PIO_LIMIT, Bus
from pvhboot.devices.debug_exit import DebugExit
from pvhboot.devices.events import EventLog, VmEvent, VmEventKind
from pvhboot.devices.i8042 import I8042
from pvhboot.devices.rtc import CmosRtc


@pytest.fixture
def log() -> EventLog:
    return EventLog()


# ---------------------------------------------------------------- i8042
def test_i8042_reset_command_raises_reset(log):
    kbd = I8042(log)
    bus = Bus("pio", limit=PIO_LIMIT)
    bus.insert(kbd, 0x60, I8042.PIO_LENGTH, "i8042")
    assert bus.read(0x64, 1) & 0x02 == 0  # kb_wait(): input buffer empty
    assert log.events == []
    bus.write(0x64, 1, 0xFE)
    assert [(e.kind, e.source) for e in log.events] == [(VmEventKind.RESET, "i8042")]


def test_i8042_status_is_sane_and_probe_commands_answer(log):
    kbd = I8042(log)
    status = kbd.read(4, 1)
    assert status != 0xFF and status & 0x01 == 0  # no byte waiting: i8042_flush() finds nothing
    kbd.write(4, 1, 0xAA)  # controller self-test
    assert kbd.read(4, 1) & 0x01
    assert kbd.read(0, 1) == 0x55
    assert kbd.read(4, 1) & 0x01 == 0
    kbd.write(4, 1, 0x60)  # write command byte
    kbd.write(0, 1, 0x47)
    kbd.write(4, 1, 0x20)  # read it back
    assert kbd.read(0, 1) == 0x47
    assert log.events == []


def test_i8042_output_port_reset_line(log):
    kbd = I8042(log)
    kbd.write(4, 1, 0xD1)
    kbd.write(0, 1, 0x03)  # reset line high: nothing
    assert log.events == []
    kbd.write(4, 1, 0xD1)
    kbd.write(0, 1, 0x02)  # bit 0 low: reset
    assert [e.kind for e in log.events] == [VmEventKind.RESET]


# ---------------------------------------------------------------- RTC
# 2026-11-27 21:05:09 UTC, a Friday
T = calendar.timegm((2026, 11, 27, 21, 5, 9, 0, 0, 0))


def cmos(rtc: CmosRtc, reg: int) -> int:
    rtc.write(0, 1, reg)
    return rtc.read(1, 1)


def cmos_set(rtc: CmosRtc, reg: int, value: int) -> None:
    rtc.write(0, 1, reg)
    rtc.write(1, 1, value)


def test_rtc_bcd_24h_default():
    rtc = CmosRtc(clock=lambda: T)
    got = [cmos(rtc, r) for r in (0, 2, 4, 6, 7, 8, 9, 0x32)]
    assert got == [0x09, 0x05, 0x21, 0x06, 0x27, 0x11, 0x26, 0x20]
    assert cmos(rtc, 0x0B) == 0x02
    assert cmos(rtc, 0x0A) & 0x80 == 0  # never update-in-progress
    assert cmos(rtc, 0x0D) == 0x80  # valid RAM and time


def test_rtc_binary_mode():
    rtc = CmosRtc(clock=lambda: T)
    cmos_set(rtc, 0x0B, 0x02 | 0x04)
    assert [cmos(rtc, r) for r in (0, 2, 4, 7, 8, 9)] == [9, 5, 21, 27, 11, 26]


def test_rtc_12_hour_mode():
    rtc = CmosRtc(clock=lambda: T)
    cmos_set(rtc, 0x0B, 0x00)  # BCD, 12-hour
    assert cmos(rtc, 4) == 0x80 | 0x09  # 9 PM


def test_rtc_nmi_bit_is_masked_off_the_index():
    rtc = CmosRtc(clock=lambda: T)
    assert cmos(rtc, 0x80 | 0x04) == 0x21


def test_rtc_cmos_ram_and_guest_set_time():
    now = [T]
    rtc = CmosRtc(clock=lambda: now[0])
    cmos_set(rtc, 0x40, 0x99)
    assert cmos(rtc, 0x40) == 0x99
    # hwclock --systohc style: SET, write the fields, clear SET.
    cmos_set(rtc, 0x0B, 0x82)
    cmos_set(rtc, 0x04, 0x08)  # 08:xx
    cmos_set(rtc, 0x0B, 0x02)
    assert cmos(rtc, 4) == 0x08
    now[0] += 3600
    assert cmos(rtc, 4) == 0x09  # the clock runs on from the guest's setting


def test_rtc_host_time_by_default():
    import time

    rtc = CmosRtc()
    year = time.gmtime().tm_year
    century, yy = cmos(rtc, 0x32), cmos(rtc, 9)  # BCD
    assert ((century >> 4) * 10 + (century & 15)) * 100 + (yy >> 4) * 10 + (yy & 15) in (year, year + 1)


# ---------------------------------------------------------------- ACPI sleep control
def test_acpi_s5_poweroff_value_0x34(log):
    pm = AcpiSleepControl(log)
    assert pm.read(1, 1) & 0x80  # WAK_STS after power-on
    pm.write(1, 1, 0x80)  # OSPM clears WAK_STS first
    assert pm.read(1, 1) & 0x80 == 0
    pm.write(0, 1, 0x34)
    assert [(e.kind, e.value, e.source) for e in log.events] == [(VmEventKind.POWEROFF, 0x34, "acpi")]


@pytest.mark.parametrize("value", [0x14, 0x20, 0x24, 0x30, 0x3C])  # S5 without SLP_EN, other SLP_TYPs
def test_acpi_other_writes_do_not_power_off(log, value):
    AcpiSleepControl(log).write(0, 1, value)
    assert log.events == []


def test_acpi_optional_reset_value(log):
    pm = AcpiSleepControl(log, reset_value=0x01)
    pm.write(0, 1, 0x01)
    assert [e.kind for e in log.events] == [VmEventKind.RESET]


# ---------------------------------------------------------------- debug exit
@pytest.mark.parametrize("size,value", [(1, 0x31), (2, 0x1234), (4, 0xDEADBEEF)])
def test_debug_exit_value(log, size, value):
    bus = Bus("pio", limit=PIO_LIMIT)
    bus.insert(DebugExit(log), 0xF4, DebugExit.PIO_LENGTH, "debug-exit")
    bus.write(0xF4, size, value)
    assert [(e.kind, e.value, e.source) for e in log.events] == [(VmEventKind.DEBUG_EXIT, value, "debug-exit")]


# ---------------------------------------------------------------- boot markers
def test_port80_records_every_code_with_timestamps(log):
    p80 = DebugPort80(log)
    for code in (0x40, 0x41, 0x40, 0x60):
        p80.write(0, 1, code)
    assert [(e.kind, e.value, e.source) for e in log.events] == [
        (VmEventKind.BOOT_MARKER, c, "port80") for c in (0x40, 0x41, 0x40, 0x60)
    ]
    times = [e.time_ns for e in log.events]
    assert times == sorted(times) and times[0] > 0


def test_debug_port_stage_ranges():
    assert [debug_port_stage(c) for c in (0x00, 0x1F, 0x20, 0x40, 0x41, 0x5F, 0x60, 0x80, 0xFF)] == [
        "firmware", "firmware", "bootloader", "kernel", "kernel", "kernel", "userspace", "custom", "custom"]


def test_firecracker_boot_timer_mmio_and_port(log):
    mmio = Bus("mmio")
    pio = Bus("pio", limit=PIO_LIMIT)
    mmio.insert(FirecrackerBootTimer(log), 0xD0000000, FirecrackerBootTimer.MMIO_LENGTH, "fc-boot-timer")
    pio.insert(FirecrackerBootTimer(log), 0x3F0, FirecrackerBootTimer.PIO_LENGTH, "fc-boot-timer")
    mmio.write(0xD0000000, 1, 122)  # wrong value
    mmio.write(0xD0000001, 1, 123)  # wrong offset
    mmio.write(0xD0000000, 4, 123)  # wrong size
    assert log.events == []
    mmio.write(0xD0000000, 1, 123)
    pio.write(0x3F0, 1, 123)
    assert [(e.kind, e.value, e.source) for e in log.events] == [(VmEventKind.BOOT_MARKER, 123, "fc-boot-timer")] * 2


def test_vm_event_is_frozen_and_timestamped():
    e = VmEvent(VmEventKind.POWEROFF)
    with pytest.raises(AttributeError):
        e.value = 1  # type: ignore[misc]
    assert e.time_ns > 0 and e.stops_vm
    assert not VmEvent(VmEventKind.BOOT_MARKER).stops_vm
