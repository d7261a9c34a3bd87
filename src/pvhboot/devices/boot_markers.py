"""Boot-time markers that instrumented guests already write, recorded with a timestamp.

- cloud-hypervisor's debug port 0x80 (docs/debug-port.md): every byte written is a code whose range
  names the boot stage: 0x00-0x1f firmware, 0x20-0x3f bootloader, 0x40-0x5f kernel, 0x60-0x7f
  userspace, 0x80-0xff custom.  Each write becomes ``VmEvent(BOOT_MARKER, value=code,
  source="port80")``.  Note that Linux's default I/O delay (``io_delay=0x80``) also writes this port
  around slow port accesses; boot with ``io_delay=none`` (or filter) to see only intended markers.
- Firecracker's boot timer (src/vmm/src/devices/pseudo/boot_timer.rs): a one-byte write of 123 at
  offset 0 of its MMIO page (0xd0000000; older releases used port 0x3f0) becomes
  ``VmEvent(BOOT_MARKER, value=123, source="fc-boot-timer")``; anything else is ignored, as there.
Reads return 0.
"""
from __future__ import annotations

from ..memory.layout import BOOT_TIMER_MAGIC
from .events import EventSink, VmEvent, VmEventKind

#: Port 0x80 decodes one port.
PORT80_LENGTH = 1
#: Firecracker maps its boot-timer device as one MMIO page; the old port device is one port.
BOOT_TIMER_MMIO_LENGTH = 0x1000
BOOT_TIMER_PIO_LENGTH = 1
#: Firecracker's MAGIC_VALUE_SIGNAL_GUEST_BOOT_COMPLETE.
FC_BOOT_COMPLETE = BOOT_TIMER_MAGIC  # 123

_RANGES = ((0x20, "firmware"), (0x40, "bootloader"), (0x60, "kernel"), (0x80, "userspace"), (0x100, "custom"))


def debug_port_stage(code: int) -> str:
    """cloud-hypervisor's name for the range a port-0x80 code is in."""
    for limit, name in _RANGES:
        if code < limit:
            return name
    return "custom"


class DebugPort80:
    """Records every byte written to port 0x80."""

    PIO_LENGTH = PORT80_LENGTH

    def __init__(self, events: EventSink) -> None:
        self._events = events
        self.count = 0

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        self.count += 1
        self._events(VmEvent(VmEventKind.BOOT_MARKER, value=value & 0xFF, source="port80"))


class FirecrackerBootTimer:
    """Firecracker's boot-timer device; one instance per registration (MMIO page or port 0x3f0)."""

    MMIO_LENGTH = BOOT_TIMER_MMIO_LENGTH
    PIO_LENGTH = BOOT_TIMER_PIO_LENGTH

    def __init__(self, events: EventSink) -> None:
        self._events = events

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        # Only a one-byte write at offset 0, as Firecracker checks.
        if size == 1 and offset == 0 and value & 0xFF == FC_BOOT_COMPLETE:
            self._events(VmEvent(VmEventKind.BOOT_MARKER, value=FC_BOOT_COMPLETE, source="fc-boot-timer"))
