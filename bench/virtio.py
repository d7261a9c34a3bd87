"""Bench 10: virtio notifications on this /dev/kvm, side by side.

A 32-bit guest writes QueueNotify of a virtio-mmio transport N times in a loop (`mov dword [notify],
q ; dec ecx ; jnz`), then leaves through the debug-exit port:

- with the value matching a KVM_IOEVENTFD registration (datamatch = queue 0): KVM signals the
  queue's eventfd and the guest goes on, no exit to user space; the device thread wakes per batch;
- with a value no ioeventfd matches (queue 7): every write is a full MMIO exit to pvhboot's run loop
  and bus (what a virtio-mmio transport without ioeventfd costs per kick).

And host side, per interrupt raised: one eventfd write registered with KVM_IRQFD (what the device
threads do) against a KVM_IRQ_LINE pulse (two ioctls).  Disks and virtio-fs against QEMU under real
Linux: bench 11 (bench/virtio_rig.py, in the nested rig).
"""
from __future__ import annotations

import argparse
import os
import time

from . import common
from .common import median, row

LOAD = 0x1000


def guest(n: int, notify_addr: int, value: int) -> bytes:
    loop = b"\xC7\x05" + notify_addr.to_bytes(4, "little") + value.to_bytes(4, "little") + b"\x49\x75\xF3"
    return b"\xB9" + n.to_bytes(4, "little") + loop + b"\xB8\x00\x00\x00\x00\xE7\xF4"


def flat32():
    from pvhboot.boot.cpu_state import CpuState, DescriptorTable, Segment

    code = Segment(selector=0x10, base=0, limit=0xFFFFFFFF, type=0xB, present=1, s=1, db=1, g=1)
    data = Segment(selector=0x18, base=0, limit=0xFFFFFFFF, type=0x3, present=1, s=1, db=1, g=1)
    return CpuState(protocol="pvh", rip=LOAD, rsp=0x8000, cr0=1, cs=code, ds=data, es=data, fs=data, gs=data,
                    ss=data, tr=Segment(selector=0x20, type=0xB, present=1, limit=0x67),
                    ldt=Segment(type=0x2, present=1, limit=0xFFFF), idt=DescriptorTable(0, 0))


def run_kicks(n: int, value: int) -> tuple[float, int]:
    """(wall seconds of the guest loop, kicks the device thread handled)."""
    from pvhboot.devices.virtio import VirtioConsole
    from pvhboot.devices.virtio import spec as V
    from pvhboot.memory import GuestMemory
    from pvhboot.memory import layout as L
    from pvhboot.vmm import Machine

    base, _, _ = L.virtio_mmio_slot(0)
    with GuestMemory([(0, 1 << 20)]) as mem:
        mem.write(LOAD, guest(n, base + V.VIRTIO_MMIO_QUEUE_NOTIFY, value))
        with Machine(mem, flat32(), console=None, timeout=300, virtio=[VirtioConsole(lambda b: None)]) as m:
            r = m.run()
            if r.reason != "debug_exit":
                raise RuntimeError(f"guest ended with {r.reason}: {r.crash_report}")
            return r.wall_time_s, 0


def run_interrupts(n: int) -> tuple[float, float]:
    """Seconds for n interrupts: irqfd eventfd writes, KVM_IRQ_LINE pulses (GSI 16, no vCPU running)."""
    from pvhboot.devices.virtio import EventFdInterrupt, LineInterrupt
    from pvhboot.kvm import Kvm

    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.create_irqchip()
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            vm.irqfd(fd, 16)
            irqfd, line = EventFdInterrupt(fd), LineInterrupt(vm.irq_line(17))
            t0 = time.perf_counter()
            for _ in range(n):
                irqfd.trigger()
            t1 = time.perf_counter()
            for _ in range(n):
                line.trigger()
            t2 = time.perf_counter()
        finally:
            os.close(fd)
    return t1 - t0, t2 - t1


def measure(repeats: int, kicks: int, irqs: int) -> dict:
    runs = {"ioeventfd": [], "exit": [], "irqfd": [], "irq_line": []}
    for _ in range(repeats):
        runs["ioeventfd"].append(run_kicks(kicks, 0)[0])
        runs["exit"].append(run_kicks(kicks, 7)[0])
        a, b = run_interrupts(irqs)
        runs["irqfd"].append(a)
        runs["irq_line"].append(b)
    us = {k: median(v) * 1e6 / (irqs if k.startswith("irq") else kicks) for k, v in runs.items()}
    rows = [
        row("10a", "virtio kick, KVM_IOEVENTFD (guest loop, wall)", "us/kick", us["ioeventfd"], us["exit"],
            "same write as an MMIO exit to pvhboot"),
        row("10b", "interrupt, KVM_IRQFD eventfd write", "us/irq", us["irqfd"], us["irq_line"],
            "KVM_IRQ_LINE pulse (2 ioctls)"),
    ]
    notes = [f"{kicks} QueueNotify writes per guest run, {irqs} interrupts per host loop, {repeats} "
             "interleaved repeats, medians; the guest loop's own instructions are emulated at CPL0 on "
             "kvm_pvm (~1 us each), so 10a includes ~3 us of loop per kick in both columns"]
    return {"rows": rows, "notes": notes, "details": {"us": us, "runs_s": runs}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kicks", type=int, default=20_000)
    ap.add_argument("--irqs", type=int, default=100_000)
    a = ap.parse_args(argv)
    common.emit("virtio", **measure(a.repeats, a.kicks, a.irqs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
