"""Address-decoding buses for port I/O and MMIO (Firecracker's `vstate/bus.rs` idea, in Python).

A device is anything with ``read(offset, size) -> int`` and ``write(offset, size, value)``; the bus
maps ``[base, base + length)`` to it and hands it ``addr - base``.  Registration refuses zero-length,
out-of-space and overlapping ranges with a :class:`~pvhboot.errors.ConfigError` naming both devices.

The run loop calls :meth:`Bus.read` / :meth:`Bus.write` once per guest I/O exit, so the hot path is
one dict lookup: every address of a small range (up to :data:`DICT_MAX_LENGTH` bytes, which covers
all port ranges and small MMIO windows) is a key.  Larger ranges are found by bisection.
"""
from __future__ import annotations

from bisect import bisect_right
from typing import NamedTuple, Protocol

from ..errors import ConfigError

#: Ranges up to this many addresses get one dict entry per address (O(1) dispatch).
DICT_MAX_LENGTH = 0x1000

#: Size of the x86 I/O port space (pass as ``limit`` for the PIO bus).
PIO_LIMIT = 1 << 16
#: Size of the physical address space an MMIO bus may decode.
MMIO_LIMIT = 1 << 64


class BusDevice(Protocol):
    def read(self, offset: int, size: int) -> int: ...  # `size` bytes (1, 2, 4, 8), little endian

    def write(self, offset: int, size: int, value: int) -> None: ...


class BusRange(NamedTuple):
    base: int
    length: int
    name: str
    device: BusDevice


class Bus:
    """One address space (``Bus("pio", limit=PIO_LIMIT)`` or ``Bus("mmio")``)."""

    def __init__(self, name: str = "mmio", limit: int = MMIO_LIMIT) -> None:
        self.name = name
        self.limit = limit
        self._ranges: list[BusRange] = []  # sorted by base
        # addr -> (read, write, base, device): bound methods cached to keep dispatch allocation-free
        self._small: dict[int, tuple] = {}
        self._large_bases: list[int] = []
        self._large: list[tuple] = []

    def insert(self, device: BusDevice, base: int, length: int, name: str = "") -> None:
        name = name or type(device).__name__
        if length <= 0:
            raise ConfigError(f"{self.name} bus: device {name!r} at {base:#x} has length {length}; it must be > 0")
        if base < 0 or base + length > self.limit:
            raise ConfigError(
                f"{self.name} bus: device {name!r} range [{base:#x}, {base + length:#x}) does not fit in the "
                f"address space [0, {self.limit:#x})"
            )
        end = base + length
        for r in self._ranges:
            if base < r.base + r.length and r.base < end:
                raise ConfigError(
                    f"{self.name} bus: device {name!r} [{base:#x}, {end:#x}) overlaps device {r.name!r} "
                    f"[{r.base:#x}, {r.base + r.length:#x})"
                )
        entry = (device.read, device.write, base, device)
        if length <= DICT_MAX_LENGTH:
            for addr in range(base, end):
                self._small[addr] = entry
        else:
            i = bisect_right(self._large_bases, base)
            self._large_bases.insert(i, base)
            self._large.insert(i, (entry, end))
        self._ranges.append(BusRange(base, length, name, device))
        self._ranges.sort(key=lambda r: r.base)

    def remove(self, base: int) -> None:
        """Take out the device registered at ``base`` (the gdb stub's RAM windows come and go)."""
        r = next((r for r in self._ranges if r.base == base), None)
        if r is None:
            raise KeyError(f"{self.name} bus: no device at {base:#x}")
        self._ranges.remove(r)
        if r.length <= DICT_MAX_LENGTH:
            for addr in range(base, base + r.length):
                del self._small[addr]
        else:
            i = self._large_bases.index(base)
            del self._large_bases[i]
            del self._large[i]

    def _find_large(self, addr: int):
        i = bisect_right(self._large_bases, addr) - 1
        if i >= 0:
            entry, end = self._large[i]
            if addr < end:
                return entry
        return None

    def lookup(self, addr: int) -> tuple[BusDevice, int] | None:
        """(device, base) of the range holding ``addr``, or None."""
        entry = self._small.get(addr)
        if entry is None:
            entry = self._find_large(addr)
            if entry is None:
                return None
        return entry[3], entry[2]

    def read(self, addr: int, size: int) -> int | None:
        """The device's value, or None when nothing is mapped (the caller returns all ones)."""
        entry = self._small.get(addr)
        if entry is None:
            entry = self._find_large(addr)
            if entry is None:
                return None
        return entry[0](addr - entry[2], size)

    def write(self, addr: int, size: int, value: int) -> bool:
        """Deliver a write; False when nothing is mapped at ``addr``."""
        entry = self._small.get(addr)
        if entry is None:
            entry = self._find_large(addr)
            if entry is None:
                return False
        entry[1](addr - entry[2], size, value)
        return True

    def ranges(self) -> list[BusRange]:
        """Every registration, sorted by base (for `pvhboot plan`-style listings and reports)."""
        return list(self._ranges)

    def __len__(self) -> int:
        return len(self._ranges)
