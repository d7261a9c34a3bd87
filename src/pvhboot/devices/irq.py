"""The interrupt line a device drives, and a recording fake for tests.

Devices raise interrupts only through :class:`IrqLine` (cloud-hypervisor's pattern: the device
layer never imports the hypervisor).  The VMM supplies a line that forwards to KVM_IRQ_LINE on the
in-kernel IOAPIC pin; tests use :class:`FakeIrqLine`.  Devices call ``set_level`` only when the
level changes, because each call costs the VMM an ioctl.
"""
from __future__ import annotations

from typing import Protocol


class IrqLine(Protocol):
    def set_level(self, high: bool) -> None: ...


class NullIrqLine:
    """A line connected to nothing (a device used without interrupts)."""

    level = False

    def set_level(self, high: bool) -> None:
        self.level = high


class FakeIrqLine:
    """Records the current ``level`` and every ``set_level`` call in ``history``.

    Devices only call on a change, so ``history`` is the list of edges; a repeated value in it is a
    device bug that :attr:`redundant_calls` counts.
    """

    def __init__(self) -> None:
        self.level = False
        self.history: list[bool] = []
        self.redundant_calls = 0

    def set_level(self, high: bool) -> None:
        high = bool(high)
        if high == self.level:
            self.redundant_calls += 1
        self.level = high
        self.history.append(high)

    def clear_history(self) -> None:
        self.history.clear()
