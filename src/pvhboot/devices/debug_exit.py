"""A debug-exit port: the guest writes a value and the VM stops with it (QEMU's isa-debug-exit idea).

Register at port 0xF4 with :data:`PIO_LENGTH` 4.  A write of 1, 2 or 4 bytes at offset 0 raises
``VmEvent(DEBUG_EXIT, value=V, source="debug-exit")`` with V exactly as written (the VMM, not the
device, maps it to an exit status; QEMU's device would report (V << 1) | 1).  Reads return 0.

A process exit status is one byte (wait(2) keeps status & 0xff), so :func:`exit_status` maps V: the
low byte when it is non-zero (0x101 -> 1, 0x1ff -> 0xff), else 1 for any non-zero V (0x100 -> 1),
so a guest that reported failure never exits 0.
"""
from __future__ import annotations

from .events import EventSink, VmEvent, VmEventKind

PIO_LENGTH = 4


class DebugExit:
    PIO_LENGTH = PIO_LENGTH

    def __init__(self, events: EventSink) -> None:
        self._events = events

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            mask = (1 << (8 * size)) - 1
            self._events(VmEvent(VmEventKind.DEBUG_EXIT, value=value & mask, source="debug-exit"))


def exit_status(value: int) -> int:
    """The process exit status for a debug-exit value (see the module docstring)."""
    low = value & 0xFF
    return low if low or value == 0 else 1
