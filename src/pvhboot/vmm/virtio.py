"""Wiring virtio devices into a Machine: transport i at layout.virtio_mmio_slot(i) on the MMIO bus,
each queue's kick eventfd registered with KVM_IOEVENTFD on QueueNotify (datamatch = queue index, so
a kick costs the vCPU no exit to user space), the interrupt an eventfd registered with KVM_IRQFD
(the device thread's write injects the edge in the kernel), and one device thread per device.

Without KVM_CAP_IOEVENTFD the QueueNotify write exits and the transport signals the same eventfd;
without KVM_CAP_IRQFD (or the in-kernel irqchip) the interrupt pulses the pin with KVM_IRQ_LINE.
"""
from __future__ import annotations

import os
import sys

from ..abi import kvm as abi
from ..devices.virtio import DeviceWorker, EventFdInterrupt, LineInterrupt, VirtioMmio
from ..devices.virtio import spec as vspec
from ..errors import ConfigError
from ..memory import layout


def virtio_slots(count: int) -> tuple[tuple[int, int, int], ...]:
    """(base, size, gsi) of the first ``count`` transports (for BootConfig.virtio_mmio / the DSDT)."""
    return tuple(layout.virtio_mmio_slot(i) for i in range(count))


class VirtioSet:
    """The transports, eventfds and device threads of one Machine."""

    def __init__(self, vm, kvm, mem, mmio_bus, devices, on_error, on_crash, irqchip: bool = True) -> None:
        self.transports: list[VirtioMmio] = []
        self.workers: list[DeviceWorker] = []
        self._irqfds: list[tuple[int, int]] = []  # (fd, gsi)
        self.uses_ioeventfd = kvm.check_extension(abi.KvmCap.IOEVENTFD) > 0
        self.uses_irqfd = irqchip and kvm.check_extension(abi.KvmCap.IRQFD) > 0
        self._on_crash = on_crash
        for i, device in enumerate(devices):
            base, size, gsi = layout.virtio_mmio_slot(i)
            if device.external_queues and not self.uses_irqfd:
                raise ConfigError(f"{device.name} needs KVM_CAP_IRQFD and the in-kernel irqchip")
            if self.uses_irqfd:
                fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                self._irqfds.append((fd, gsi))
                vm.irqfd(fd, gsi)
                interrupt = EventFdInterrupt(fd)
            else:
                interrupt = LineInterrupt(vm.irq_line(gsi)) if irqchip else _NoInterrupt()
            transport = VirtioMmio(device, mem, interrupt, on_error=on_error)
            self.transports.append(transport)
            if hasattr(device, "transport"):
                device.transport = transport
            mmio_bus.insert(transport, base, size, f"virtio{i}-{device.name}")
            if self.uses_ioeventfd:  # for a vhost-user device the back end waits on the same eventfds
                for q, fd in enumerate(transport.notify_fds):
                    vm.ioeventfd(fd, base + vspec.VIRTIO_MMIO_QUEUE_NOTIFY, 4, datamatch=q)
            elif device.external_queues:
                raise ConfigError(f"{device.name} needs KVM_CAP_IOEVENTFD (the back end waits on the kick)")

    def start(self) -> None:
        for i, t in enumerate(self.transports):
            if t.device.external_queues:
                continue
            self.workers.append(DeviceWorker(t, f"virtio{i}", on_crash=self._on_crash).start())

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        self.workers = []

    def close(self) -> None:
        self.stop()
        for t in self.transports:
            t.close()
        self.transports = []
        for fd, _gsi in self._irqfds:
            os.close(fd)  # closing the eventfd also releases KVM's irqfd (it watches for POLLHUP)
        self._irqfds = []


class _NoInterrupt:
    def trigger(self) -> None:
        pass


def report_driver_error(message: str) -> None:
    print(f"pvhboot: virtio: {message} (device needs reset)", file=sys.stderr)


# --- what the user asks for: disks and shared directories ---
class DiskSpec:
    """``--disk PATH[,ro]``."""

    def __init__(self, path: str, read_only: bool = False) -> None:
        self.path, self.read_only = path, read_only

    @classmethod
    def parse(cls, text: str) -> DiskSpec:
        from ..errors import ConfigError

        path, *opts = text.split(",")
        if not path:
            raise ConfigError(f"--disk {text!r}: no path (PATH[,ro])")
        bad = [o for o in opts if o not in ("ro", "rw")]
        if bad:
            raise ConfigError(f"--disk {text!r}: unknown option {bad[0]!r} (PATH[,ro])")
        return cls(path, read_only="ro" in opts)


class ShareSpec:
    """A host directory shown to the guest through virtio-fs under ``tag`` (mounted by the guest)."""

    def __init__(self, host: str, tag: str, read_only: bool = False) -> None:
        self.host, self.tag, self.read_only = host, tag, read_only

    @classmethod
    def parse(cls, text: str, index: int) -> ShareSpec:
        """``--share HOST[:TAG]`` (TAG defaults to share<index>).  The guest mounts it (read-only
        if it likes: QEMU 7.2's virtiofsd has no read-only mode of its own)."""
        from ..errors import ConfigError

        host, _, tag = text.partition(":")
        if not host:
            raise ConfigError(f"--share {text!r}: no host directory (HOST[:TAG])")
        return cls(host, tag or f"share{index}")


def build_virtio_devices(disks=(), shares=(), console=None):
    """The devices for ``disks`` (DiskSpec) and ``shares`` (ShareSpec) and, when ``console`` (a
    callable taking bytes) is given, a virtio-console writing to it; and the virtiofsd daemons
    started for the shares (the caller stops them).  Transport order: disks, shares, console."""
    from ..devices.virtio import VirtioBlock
    from ..devices.virtio.fs import VirtioFs
    from ..devices.virtio.vhost_user import VhostUserError
    from ..errors import ConfigError
    from .virtiofsd import Virtiofsd

    devices, daemons = [], []
    try:
        for d in disks:
            devices.append(VirtioBlock(d.path, read_only=d.read_only))
        for s in shares:
            daemon = Virtiofsd(s.host, s.tag)
            daemons.append(daemon)
            daemon.start()
            try:
                devices.append(VirtioFs(daemon.socket_path, s.tag))
            except (VhostUserError, ValueError) as e:
                raise ConfigError(f"share {s.host}: {e}; virtiofsd said: {daemon.log_tail()}") from None
        if console is not None:
            from ..devices.virtio import VirtioConsole

            devices.append(VirtioConsole(console))
    except BaseException:
        for dev in devices:
            dev.close()
        for daemon in daemons:
            daemon.stop()
        raise
    return devices, daemons
