"""devices/bus.py: registration errors and address decoding."""
from __future__ import annotations

import pytest

from pvhboot.devices.bus import DICT_MAX_LENGTH, PIO_LIMIT, Bus
from pvhboot.errors import ConfigError


class Recorder:
    def __init__(self, value: int = 0xAB) -> None:
        self.value = value
        self.reads: list[tuple[int, int]] = []
        self.writes: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        self.reads.append((offset, size))
        return self.value

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


def test_zero_length_is_refused_with_name_and_address():
    bus = Bus("pio", limit=PIO_LIMIT)
    with pytest.raises(ConfigError, match=r"pio bus: device 'uart' at 0x3f8 has length 0"):
        bus.insert(Recorder(), 0x3F8, 0, "uart")


def test_range_past_port_space_is_refused():
    bus = Bus("pio", limit=PIO_LIMIT)
    with pytest.raises(ConfigError,
                       match=r"'late' range \[0xfffe, 0x10002\) does not fit in the address space \[0, 0x10000\)"):
        bus.insert(Recorder(), 0xFFFE, 4, "late")
    bus.insert(Recorder(), 0xFFFC, 4, "last")  # ending exactly at the limit is fine
    assert bus.lookup(0xFFFF)[1] == 0xFFFC


def test_negative_base_is_refused():
    with pytest.raises(ConfigError, match="does not fit"):
        Bus("pio", limit=PIO_LIMIT).insert(Recorder(), -1, 2, "neg")


@pytest.mark.parametrize("base,length", [(0x3F8, 8), (0x3F0, 9), (0x3FF, 1), (0x3F0, 0x20), (0x3FC, 2)])
def test_overlap_names_both_devices(base, length):
    bus = Bus("pio", limit=PIO_LIMIT)
    bus.insert(Recorder(), 0x3F8, 8, "com1")
    with pytest.raises(ConfigError) as exc:
        bus.insert(Recorder(), base, length, "intruder")
    msg = str(exc.value)
    assert "'intruder'" in msg and "'com1' [0x3f8, 0x400)" in msg and "overlaps" in msg


def test_adjacent_ranges_are_allowed():
    bus = Bus("pio", limit=PIO_LIMIT)
    bus.insert(Recorder(), 0x3F8, 8, "com1")
    bus.insert(Recorder(), 0x3F0, 8, "below")
    bus.insert(Recorder(), 0x400, 1, "above")
    assert [r.name for r in bus.ranges()] == ["below", "com1", "above"]


def test_lookup_read_write_dispatch_with_offsets():
    bus = Bus("pio", limit=PIO_LIMIT)
    dev = Recorder(0x5A)
    bus.insert(dev, 0x70, 2, "rtc")
    assert bus.lookup(0x71) == (dev, 0x70)
    assert bus.lookup(0x72) is None
    assert bus.lookup(0x6F) is None
    assert bus.read(0x71, 1) == 0x5A
    assert dev.reads == [(1, 1)]
    assert bus.write(0x70, 1, 0x8B) is True
    assert dev.writes == [(0, 1, 0x8B)]


def test_unmapped_access_reports_none_and_false():
    bus = Bus("pio", limit=PIO_LIMIT)
    assert bus.read(0x1234, 1) is None
    assert bus.write(0x1234, 4, 0xFFFFFFFF) is False


def test_large_mmio_ranges_use_bisection():
    bus = Bus("mmio")
    big, small, big2 = Recorder(1), Recorder(2), Recorder(3)
    length = DICT_MAX_LENGTH * 4
    bus.insert(big, 0xD0000000, length, "big")
    bus.insert(small, 0xFEC00000, 0x100, "small")
    bus.insert(big2, 0xE0000000, length, "big2")
    assert bus.lookup(0xD0000000) == (big, 0xD0000000)
    assert bus.lookup(0xD0000000 + length - 1) == (big, 0xD0000000)
    assert bus.lookup(0xD0000000 + length) is None
    assert bus.lookup(0xDFFFFFFF) is None
    assert bus.lookup(0xE0000010) == (big2, 0xE0000000)
    assert bus.read(0xE0000010, 4) == 3 and big2.reads == [(0x10, 4)]
    assert bus.write(0xFEC000FF, 1, 7) and small.writes == [(0xFF, 1, 7)]
    with pytest.raises(ConfigError, match="'inner'.*overlaps device 'big'"):
        bus.insert(Recorder(), 0xD0001000, 0x10, "inner")
    with pytest.raises(ConfigError, match="'wrap'.*overlaps device 'big2'"):
        bus.insert(Recorder(), 0xDFFFF000, 0x2000, "wrap")


def test_mmio_bus_refuses_past_64_bits():
    with pytest.raises(ConfigError, match="does not fit"):
        Bus("mmio").insert(Recorder(), (1 << 64) - 0x10, 0x20, "top")


def test_default_name_is_the_class_name():
    bus = Bus("pio", limit=PIO_LIMIT)
    bus.insert(Recorder(), 0x80, 1)
    with pytest.raises(ConfigError, match="'Recorder'"):
        bus.insert(Recorder(), 0x80, 1, "again")


@pytest.mark.parametrize("length", [8, DICT_MAX_LENGTH + 0x1000])
def test_remove_takes_out_only_that_device(length):
    """The gdb stub's page-trap windows come and go (vmm/gdbstub.py RamWindow)."""
    bus = Bus("mmio")
    a, b = Recorder(1), Recorder(2)
    bus.insert(a, 0x10000, length, "a")
    bus.insert(b, 0x10000 + length, length, "b")
    bus.remove(0x10000)
    assert bus.read(0x10000, 4) is None and not bus.write(0x10000 + length - 1, 1, 0)
    assert bus.read(0x10000 + length, 4) == 2 and len(bus) == 1
    bus.insert(Recorder(3), 0x10000, length, "again")  # the range is free again
    assert bus.read(0x10000, 4) == 3
    with pytest.raises(KeyError, match="no device at 0x20"):
        bus.remove(0x20)
