"""The MC146818 CMOS real-time clock with the host's time (index port 0x70, data port 0x71).

Register the device at 0x70 with :data:`PIO_LENGTH` 2: offset 0 selects a CMOS register (bit 7 is
the NMI-disable bit on a PC and is masked off), offset 1 reads or writes it.  Time registers read
the host's UTC time (Linux assumes the RTC keeps UTC unless told otherwise) plus an offset that the
guest moves by setting the clock; their encoding follows status register B: BCD unless DM (bit 2),
12-hour with the PM flag in bit 7 of the hour unless 24/12 (bit 1).  Register A never shows
update-in-progress, so readers never spin; register D reports valid RAM and time.  The other
bytes are plain CMOS RAM.  Register 0x32 holds the century (the FADT's CENTURY field may point at it).
Per the MC146818A data sheet; Linux's reader is drivers/rtc/rtc-mc146818-lib.c.
"""
from __future__ import annotations

import time
from collections.abc import Callable

PIO_LENGTH = 2
INDEX_OFFSET = 0  # port 0x70
DATA_OFFSET = 1  # port 0x71

RTC_SECONDS = 0x00
RTC_SECONDS_ALARM = 0x01
RTC_MINUTES = 0x02
RTC_MINUTES_ALARM = 0x03
RTC_HOURS = 0x04
RTC_HOURS_ALARM = 0x05
RTC_DAY_OF_WEEK = 0x06
RTC_DAY_OF_MONTH = 0x07
RTC_MONTH = 0x08
RTC_YEAR = 0x09
RTC_REG_A = 0x0A
RTC_REG_B = 0x0B
RTC_REG_C = 0x0C
RTC_REG_D = 0x0D
RTC_CENTURY = 0x32

REG_A_UIP = 0x80  # update in progress
REG_B_SET = 0x80  # updates frozen while the guest sets the clock
REG_B_DM_BINARY = 0x04
REG_B_24H = 0x02
REG_D_VRT = 0x80  # valid RAM and time

# 32.768 kHz time base (DV=010), 1024 Hz periodic rate (RS=0110): the usual PC setting.
_DEFAULT_REG_A = 0x26
_DEFAULT_REG_B = REG_B_24H  # BCD, 24-hour
_TIME_REGS = (RTC_SECONDS, RTC_MINUTES, RTC_HOURS, RTC_DAY_OF_WEEK, RTC_DAY_OF_MONTH, RTC_MONTH, RTC_YEAR, RTC_CENTURY)


def _to_bcd(v: int) -> int:
    return ((v // 10) << 4) | (v % 10)


def _from_bcd(v: int) -> int:
    return (v >> 4) * 10 + (v & 0x0F)


class CmosRtc:
    PIO_LENGTH = PIO_LENGTH

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock  # seconds since the epoch, UTC
        self._offset = 0  # guest-set time minus host time, in seconds
        self._index = 0
        self._ram = bytearray(128)
        self._ram[RTC_REG_A] = _DEFAULT_REG_A
        self._ram[RTC_REG_B] = _DEFAULT_REG_B
        self._ram[RTC_REG_D] = REG_D_VRT

    # ---- encoding per register B
    def _encode(self, v: int) -> int:
        return v if self._ram[RTC_REG_B] & REG_B_DM_BINARY else _to_bcd(v)

    def _decode(self, v: int) -> int:
        return v if self._ram[RTC_REG_B] & REG_B_DM_BINARY else _from_bcd(v)

    def _encode_hour(self, hour: int) -> int:
        if self._ram[RTC_REG_B] & REG_B_24H:
            return self._encode(hour)
        pm = 0x80 if hour >= 12 else 0
        return self._encode(hour % 12 or 12) | pm

    def _decode_hour(self, v: int) -> int:
        if self._ram[RTC_REG_B] & REG_B_24H:
            return self._decode(v)
        hour = self._decode(v & 0x7F) % 12
        return hour + 12 if v & 0x80 else hour

    def _time_fields(self) -> dict[int, int]:
        t = time.gmtime(int(self._clock()) + self._offset)
        return {
            RTC_SECONDS: self._encode(t.tm_sec),
            RTC_MINUTES: self._encode(t.tm_min),
            RTC_HOURS: self._encode_hour(t.tm_hour),
            RTC_DAY_OF_WEEK: self._encode((t.tm_wday + 1) % 7 + 1),  # 1 = Sunday
            RTC_DAY_OF_MONTH: self._encode(t.tm_mday),
            RTC_MONTH: self._encode(t.tm_mon),
            RTC_YEAR: self._encode(t.tm_year % 100),
            RTC_CENTURY: self._encode(t.tm_year // 100),
        }

    def _commit_guest_time(self) -> None:
        """The guest cleared SET: its register values become the clock (as an offset from the host's)."""
        r = self._ram
        year = self._decode(r[RTC_CENTURY]) * 100 + self._decode(r[RTC_YEAR])
        import calendar  # only when the guest sets the clock

        try:
            guest = calendar.timegm(
                (year, self._decode(r[RTC_MONTH]), self._decode(r[RTC_DAY_OF_MONTH]),
                 self._decode_hour(r[RTC_HOURS]), self._decode(r[RTC_MINUTES]), self._decode(r[RTC_SECONDS]), 0, 0, 0)
            )
        except (ValueError, OverflowError):
            return  # nonsense written: keep the old time
        self._offset = guest - int(self._clock())

    # ---- bus device
    def read(self, offset: int, size: int) -> int:
        if offset == INDEX_OFFSET:
            return self._index  # write-only on real hardware; reading back is harmless
        if offset != DATA_OFFSET:
            return 0xFF
        reg = self._index
        if reg in _TIME_REGS and not self._ram[RTC_REG_B] & REG_B_SET:
            return self._time_fields()[reg]
        if reg == RTC_REG_A:
            return self._ram[RTC_REG_A] & ~REG_A_UIP
        if reg == RTC_REG_C:
            return 0  # no interrupt flags; reading clears them anyway
        return self._ram[reg]

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == INDEX_OFFSET:
            self._index = value & 0x7F  # bit 7 is the NMI mask, not part of the index
            return
        if offset != DATA_OFFSET:
            return
        reg = self._index
        if reg == RTC_REG_B:
            old = self._ram[RTC_REG_B]
            if value & REG_B_SET and not old & REG_B_SET:
                for r, v in self._time_fields().items():  # freeze the current time for editing
                    self._ram[r] = v
            self._ram[RTC_REG_B] = value
            if old & REG_B_SET and not value & REG_B_SET:
                self._commit_guest_time()
        elif reg in (RTC_REG_C, RTC_REG_D):
            return  # read-only
        elif reg == RTC_REG_A:
            self._ram[reg] = value & ~REG_A_UIP  # UIP is read-only
        else:
            self._ram[reg] = value
            if reg in _TIME_REGS and not self._ram[RTC_REG_B] & REG_B_SET:
                # A time register written without SET: apply it at once, as if SET had been used.
                fields = self._time_fields()
                fields[reg] = value
                for r, v in fields.items():
                    self._ram[r] = v
                self._commit_guest_time()
