"""What a virtio device is to its transport (kvmtool's split: the transport knows registers, the
device knows requests).  Devices know nothing of KVM or of MMIO."""
from __future__ import annotations

import os
from typing import Protocol


class Interrupt(Protocol):
    """An edge the transport raises after it sets a bit in InterruptStatus.  The VMM gives an eventfd
    wired to KVM_IRQFD (no ioctl from Python) or a pulse of a KVM_IRQ_LINE pin; tests count calls."""

    def trigger(self) -> None: ...


class LineInterrupt:
    """An :class:`~pvhboot.devices.irq.IrqLine` used as an edge (high then low)."""

    def __init__(self, line) -> None:
        self.line = line

    def trigger(self) -> None:
        self.line.set_level(True)
        self.line.set_level(False)


class EventFdInterrupt:
    """An eventfd the VMM registered with KVM_IRQFD: one write() is one edge, injected by the kernel."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def trigger(self) -> None:
        os.eventfd_write(self.fd, 1)


class CountingInterrupt:
    """For tests: counts triggers."""

    def __init__(self) -> None:
        self.count = 0

    def trigger(self) -> None:
        self.count += 1


class VirtioDevice:
    """Base class.  Subclasses set ``device_id``, ``queue_sizes``, ``features`` (device-specific bits;
    the transport adds VERSION_1 and EVENT_IDX) and implement :meth:`process` and :meth:`config`."""

    device_id = 0
    queue_sizes: tuple[int, ...] = ()
    features = 0
    name = "virtio"
    #: True when another process (vhost-user) owns the queues: the transport then hands them over
    #: on DRIVER_OK instead of the worker thread processing kicks.
    external_queues = False

    def config(self) -> bytes:
        """The device configuration space (read-only here; §4.2.2 offset 0x100)."""
        return b""

    def write_config(self, offset: int, data: bytes) -> None:
        """A driver write into config space; ignored unless a device needs it."""

    def activate(self, mem, queues, negotiated: int) -> None:
        """DRIVER_OK: the queues are set up and checked.  ``negotiated`` is the driver's feature set."""

    def reset(self) -> None:
        """Status 0 written: forget every in-flight request."""

    def process(self, mem, index: int, queue) -> bool:
        """Handle the chains available on queue ``index``; True when used entries were pushed."""
        return False

    def close(self) -> None:
        """Release host resources (files, sockets, daemons)."""
