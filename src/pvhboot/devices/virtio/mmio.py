"""The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2): one register window per device.

It is a :class:`~pvhboot.devices.bus.BusDevice` on the MMIO bus.  Register accesses come from vCPU
threads (MMIO exits); queue work runs on the device's worker thread (worker.py), woken by an eventfd
per queue that KVM signals on a QueueNotify write (KVM_IOEVENTFD) -- or that :meth:`write` signals
itself when no ioeventfd absorbed the write.  One lock orders the two.

Feature negotiation (§3.1.1): FEATURES_OK sticks only when the driver accepted a subset of the
offer that includes VIRTIO_F_VERSION_1 (a legacy driver is refused).  A driver error found in a
queue (see queue.py) sets DEVICE_NEEDS_RESET and, once DRIVER_OK, raises a configuration change
interrupt (§2.1.2); the device then ignores that queue until the driver resets it (status 0).
"""
from __future__ import annotations

import os
import threading

from . import spec
from .device import VirtioDevice
from .queue import SplitQueue, VirtqueueError

_TRANSPORT_FEATURES = (1 << spec.VIRTIO_F_VERSION_1) | (1 << spec.VIRTIO_RING_F_EVENT_IDX)


class VirtioMmio:
    """``interrupt.trigger()`` raises the device's interrupt; ``on_error(message)`` hears about
    driver errors (the VMM logs them in its events)."""

    WINDOW = spec.VIRTIO_MMIO_WINDOW

    def __init__(self, device: VirtioDevice, mem, interrupt, on_error=None) -> None:
        self.device = device
        self.mem = mem
        self.interrupt = interrupt
        self.on_error = on_error
        self.lock = threading.RLock()
        self.queues = [SplitQueue(n) for n in device.queue_sizes]
        # One eventfd per queue: the kick.  The VMM registers each with KVM_IOEVENTFD on QueueNotify.
        self.notify_fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in self.queues]
        # A vhost-user device offers only what its back end implements (it already filtered).
        self.device_features = device.features | (0 if device.external_queues else _TRANSPORT_FEATURES)
        self.errors: list[str] = []
        self._reset_registers()

    def _reset_registers(self) -> None:
        self.status = 0
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.driver_features = 0
        self.queue_sel = 0
        self.interrupt_status = 0
        self.config_generation = 0
        for q in self.queues:
            q.reset()

    def close(self) -> None:
        for fd in self.notify_fds:
            os.close(fd)
        self.notify_fds = []
        self.device.close()

    # --- helpers ---
    @property
    def driver_ok(self) -> bool:
        return bool(self.status & spec.VIRTIO_CONFIG_S_DRIVER_OK) and not self.status & spec.VIRTIO_CONFIG_S_NEEDS_RESET

    def _selected(self) -> SplitQueue | None:
        return self.queues[self.queue_sel] if self.queue_sel < len(self.queues) else None

    def fail(self, message: str) -> None:
        """The driver broke a rule: DEVICE_NEEDS_RESET (+ config interrupt once DRIVER_OK)."""
        with self.lock:
            self.errors.append(message)
            notify = bool(self.status & spec.VIRTIO_CONFIG_S_DRIVER_OK)
            self.status |= spec.VIRTIO_CONFIG_S_NEEDS_RESET
            if notify:
                self.interrupt_status |= spec.VIRTIO_MMIO_INT_CONFIG
        if self.on_error is not None:
            self.on_error(f"{self.device.name}: {message}")
        if notify:
            self.interrupt.trigger()

    # --- the register window (BusDevice) ---
    def read(self, offset: int, size: int) -> int:
        if offset >= spec.VIRTIO_MMIO_CONFIG:
            cfg = self.device.config()
            off = offset - spec.VIRTIO_MMIO_CONFIG
            return int.from_bytes(cfg[off:off + size].ljust(size, b"\0"), "little")
        if size != 4 or offset % 4:
            return 0  # §4.2.2: registers are 32-bit; other widths are undefined, read as 0
        with self.lock:
            q = self._selected()
            if offset == spec.VIRTIO_MMIO_MAGIC_VALUE:
                return spec.VIRTIO_MMIO_MAGIC
            if offset == spec.VIRTIO_MMIO_VERSION:
                return spec.VIRTIO_MMIO_VERSION_2
            if offset == spec.VIRTIO_MMIO_DEVICE_ID:
                return self.device.device_id
            if offset == spec.VIRTIO_MMIO_VENDOR_ID_REG:
                return spec.VIRTIO_MMIO_VENDOR_ID
            if offset == spec.VIRTIO_MMIO_DEVICE_FEATURES:
                return (self.device_features >> (32 * self.device_features_sel)) & 0xFFFFFFFF \
                    if self.device_features_sel < 2 else 0
            if offset == spec.VIRTIO_MMIO_QUEUE_NUM_MAX:
                return q.max_size if q is not None else 0
            if offset == spec.VIRTIO_MMIO_QUEUE_READY:
                return int(q.ready) if q is not None else 0
            if offset == spec.VIRTIO_MMIO_INTERRUPT_STATUS:
                return self.interrupt_status | self._sticky_vring()
            if offset == spec.VIRTIO_MMIO_STATUS:
                return self.status
            if offset == spec.VIRTIO_MMIO_CONFIG_GENERATION:
                return self.config_generation
            if offset == spec.VIRTIO_MMIO_SHM_LEN_LOW or offset == spec.VIRTIO_MMIO_SHM_LEN_HIGH:
                return 0xFFFFFFFF  # §4.2.2: no shared memory region with this id
            if offset == spec.VIRTIO_MMIO_SHM_BASE_LOW or offset == spec.VIRTIO_MMIO_SHM_BASE_HIGH:
                return 0xFFFFFFFF
            if q is not None:
                for reg, attr, high in _QUEUE_ADDR_REGS:
                    if offset == reg:
                        value = getattr(q, attr)
                        return (value >> 32) if high else value & 0xFFFFFFFF
            return 0

    def _sticky_vring(self) -> int:
        # A device whose queues live in another process (vhost-user) signals KVM's irqfd directly,
        # so this transport never sees the used buffer: report "used buffer" on every read once
        # running (Linux's vm_interrupt then polls each queue; a queue with nothing new is a no-op).
        return spec.VIRTIO_MMIO_INT_VRING if self.device.external_queues and self.driver_ok else 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset >= spec.VIRTIO_MMIO_CONFIG:
            with self.lock:
                self.device.write_config(offset - spec.VIRTIO_MMIO_CONFIG, value.to_bytes(size, "little"))
            return
        if size != 4 or offset % 4:
            return
        if offset == spec.VIRTIO_MMIO_QUEUE_NOTIFY:
            self.kick(value)
            return
        with self.lock:
            q = self._selected()
            if offset == spec.VIRTIO_MMIO_DEVICE_FEATURES_SEL:
                self.device_features_sel = value
            elif offset == spec.VIRTIO_MMIO_DRIVER_FEATURES_SEL:
                self.driver_features_sel = value
            elif offset == spec.VIRTIO_MMIO_DRIVER_FEATURES:
                if self.driver_features_sel < 2 and not self.status & spec.VIRTIO_CONFIG_S_FEATURES_OK:
                    shift = 32 * self.driver_features_sel
                    self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | (value << shift)
            elif offset == spec.VIRTIO_MMIO_QUEUE_SEL:
                self.queue_sel = value
            elif offset == spec.VIRTIO_MMIO_INTERRUPT_ACK:
                self.interrupt_status &= ~value
            elif offset == spec.VIRTIO_MMIO_STATUS:
                self._write_status(value)
            elif q is not None and not self.driver_ok:
                # §4.2.3.2: queue registers are written before DRIVER_OK (ignored after, except reset).
                if offset == spec.VIRTIO_MMIO_QUEUE_NUM:
                    q.size = value
                elif offset == spec.VIRTIO_MMIO_QUEUE_READY:
                    self._queue_ready(q, bool(value & 1))
                elif offset == spec.VIRTIO_MMIO_QUEUE_RESET and value == 1:
                    q.reset()
                else:
                    for reg, attr, high in _QUEUE_ADDR_REGS:
                        if offset == reg:
                            old = getattr(q, attr)
                            new = ((old & 0xFFFFFFFF) | (value << 32)) if high else \
                                ((old & ~0xFFFFFFFF) | value)
                            setattr(q, attr, new)

    def _queue_ready(self, q: SplitQueue, ready: bool) -> None:
        if not ready:
            q.ready = False
            return
        try:
            q.check_layout(self.mem)
        except VirtqueueError as e:
            self.lock.release()  # fail() takes the lock itself and may call out
            try:
                self.fail(f"queue {self.queues.index(q)}: {e}")
            finally:
                self.lock.acquire()
            return
        q.ready = True

    def _write_status(self, value: int) -> None:
        if value == 0:
            self.device.reset()
            self._reset_registers()
            return
        S = spec
        if value & S.VIRTIO_CONFIG_S_FEATURES_OK and not self.status & S.VIRTIO_CONFIG_S_FEATURES_OK:
            extra = self.driver_features & ~self.device_features
            if extra or not self.driver_features >> S.VIRTIO_F_VERSION_1 & 1:
                value &= ~S.VIRTIO_CONFIG_S_FEATURES_OK  # the driver reads it back and gives up
        becomes_ok = value & S.VIRTIO_CONFIG_S_DRIVER_OK and not self.status & S.VIRTIO_CONFIG_S_DRIVER_OK
        # NEEDS_RESET is the device's bit: the driver cannot clear it except by a reset.
        self.status = value | (self.status & S.VIRTIO_CONFIG_S_NEEDS_RESET)
        if becomes_ok:
            if not self.status & S.VIRTIO_CONFIG_S_FEATURES_OK:
                self.status |= S.VIRTIO_CONFIG_S_NEEDS_RESET
                self.errors.append("DRIVER_OK without FEATURES_OK")
                return
            event_idx = bool(self.driver_features >> S.VIRTIO_RING_F_EVENT_IDX & 1)
            for q in self.queues:
                q.event_idx = event_idx
            self.device.activate(self.mem, self.queues, self.driver_features)

    # --- queue work ---
    def kick(self, index: int) -> None:
        """QueueNotify reached user space (no ioeventfd matched): wake the worker as KVM would."""
        if 0 <= index < len(self.notify_fds):
            os.eventfd_write(self.notify_fds[index], 1)

    def process(self, index: int) -> None:
        """Run the device on queue ``index`` (the worker thread calls this after a kick)."""
        with self.lock:
            if not self.driver_ok or index >= len(self.queues):
                return
            q = self.queues[index]
            if not q.ready or q.broken:
                return
            try:
                pushed = self.device.process(self.mem, index, q)
            except VirtqueueError as e:
                q.broken = q.broken or str(e)
                pushed = False
                error = f"queue {index}: {e}"
            else:
                error = None
            signal = pushed and q.needs_notification(self.mem)
            if signal:
                self.interrupt_status |= spec.VIRTIO_MMIO_INT_VRING
        if error is not None:
            self.fail(error)
        elif signal:
            self.interrupt.trigger()

    def signal_used(self, index: int) -> None:
        """For devices that push used entries outside :meth:`process` (console input)."""
        with self.lock:
            q = self.queues[index]
            if not q.needs_notification(self.mem):
                return
            self.interrupt_status |= spec.VIRTIO_MMIO_INT_VRING
        self.interrupt.trigger()


_QUEUE_ADDR_REGS = (
    (spec.VIRTIO_MMIO_QUEUE_DESC_LOW, "desc_addr", False), (spec.VIRTIO_MMIO_QUEUE_DESC_HIGH, "desc_addr", True),
    (spec.VIRTIO_MMIO_QUEUE_AVAIL_LOW, "avail_addr", False), (spec.VIRTIO_MMIO_QUEUE_AVAIL_HIGH, "avail_addr", True),
    (spec.VIRTIO_MMIO_QUEUE_USED_LOW, "used_addr", False), (spec.VIRTIO_MMIO_QUEUE_USED_HIGH, "used_addr", True),
)
