"""virtio devices over the virtio-mmio transport (virtio 1.2), knowing nothing of KVM.

    spec.py     every number from the specification, once
    queue.py    split virtqueues with event index; hostile-chain checks (VirtqueueError)
    mmio.py     VirtioMmio: the version-2 register window (a BusDevice), feature negotiation,
                NEEDS_RESET on driver errors, one kick eventfd per queue
    worker.py   DeviceWorker: the device thread (selector on the kick eventfds)
    device.py   VirtioDevice base + the Interrupt protocol (trigger())
    blk.py      VirtioBlock over a raw image (flush = fsync, read-only refuses writes)
    console.py  VirtioConsole (hvc0)

The VMM (vmm/virtio.py) places transports at memory.layout.VIRTIO_MMIO_START + i * STRIDE with GSI
VIRTIO_IRQ_FIRST + i, wires the kick eventfds to KVM_IOEVENTFD and the interrupt to KVM_IRQFD, and
describes them in the DSDT (boot/acpi.py).
"""
from .blk import VirtioBlock
from .console import VirtioConsole
from .device import CountingInterrupt, EventFdInterrupt, Interrupt, LineInterrupt, VirtioDevice
from .mmio import VirtioMmio
from .queue import SplitQueue, VirtqueueError
from .worker import DeviceWorker

__all__ = ["CountingInterrupt", "DeviceWorker", "EventFdInterrupt", "Interrupt", "LineInterrupt", "SplitQueue",
           "VirtioBlock", "VirtioConsole", "VirtioDevice", "VirtioMmio", "VirtqueueError"]
# fs.py (VirtioFs, vhost-user front end) and vhost_user.py are imported by name where used.
