"""VM events raised by devices: power-off, reset, debug exit, boot markers, console quit.

Devices know nothing of KVM or of the run loop: they report what the guest asked for by calling an
:data:`EventSink`, and the VMM decides what it means (stop the vCPUs, pick an exit status, record a
boot-marker time in the exit record).
"""
from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class VmEventKind(enum.Enum):
    POWEROFF = "poweroff"  # ACPI S5 through the FADT sleep control register
    RESET = "reset"  # i8042 pulse-reset (0xFE on port 0x64)
    DEBUG_EXIT = "debug-exit"  # value written to the debug-exit port (probe, tests)
    BOOT_MARKER = "boot-marker"  # port 0x80 code or Firecracker's boot-timer byte
    QUIT = "quit"  # the user typed Ctrl-A x on the console (as in QEMU)
    DEVICE_ERROR = "device-error"  # a virtio driver broke the rules; the device is in NEEDS_RESET


@dataclass(frozen=True)
class VmEvent:
    kind: VmEventKind
    value: int = 0
    time_ns: int = field(default_factory=time.monotonic_ns)  # time.monotonic_ns() when raised
    source: str = ""  # which device: "acpi", "i8042", "debug-exit", "port80", "fc-boot-timer", "console"

    @property
    def stops_vm(self) -> bool:
        """True for the events after which the guest must not run on."""
        return self.kind not in (VmEventKind.BOOT_MARKER, VmEventKind.DEVICE_ERROR)


EventSink = Callable[[VmEvent], None]


class EventLog:
    """A thread-safe list of events, usable as an :data:`EventSink` (tests, --events-json)."""

    def __init__(self) -> None:
        self.events: list[VmEvent] = []
        self._lock = threading.Lock()

    def __call__(self, event: VmEvent) -> None:
        with self._lock:
            self.events.append(event)

    def __len__(self) -> int:
        return len(self.events)
