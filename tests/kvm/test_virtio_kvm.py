"""kvm tier: a hand-assembled 32-bit guest drives a virtio-blk queue through the real transport on
/dev/kvm: the kick reaches the device thread through KVM_IOEVENTFD (no user-space exit: the transport's
own QueueNotify path is never entered) and completion comes back as a KVM_IRQFD edge that the guest
sees pending in its local APIC's IRR (IOAPIC pin 16 -> vector 0x40, interrupts off)."""
from __future__ import annotations

import os
import struct

import guests
import pytest

from pvhboot.abi import kvm as abi
from pvhboot.devices.virtio import VirtioBlock, VirtioConsole
from pvhboot.devices.virtio import spec as V
from pvhboot.kvm import Kvm
from pvhboot.memory import GuestMemory
from pvhboot.memory import layout as L
from pvhboot.vmm import Machine

pytestmark = pytest.mark.kvm

BASE, _, GSI = L.virtio_mmio_slot(0)
DESC, AVAIL, USED = 0x10000, 0x11000, 0x12000
QSIZE = 16
VECTOR = 0x40


def store(addr: int, value: int) -> bytes:  # mov dword [addr], imm32
    return b"\xC7\x05" + addr.to_bytes(4, "little") + value.to_bytes(4, "little")


def wait_u16(addr: int, value: int) -> bytes:  # L: movzx eax, word [addr] ; cmp eax, value ; jne L
    return b"\x0F\xB7\x05" + addr.to_bytes(4, "little") + bytes([0x83, 0xF8, value, 0x75, 0xF4])


def wait_irr(vector: int) -> bytes:  # L: mov eax, [IRR word] ; test eax, bit ; jz L
    irr = L.LAPIC_ADDR + 0x200 + 0x10 * (vector // 32)
    return (b"\xA1" + irr.to_bytes(4, "little") + b"\xA9" + (1 << (vector % 32)).to_bytes(4, "little")
            + b"\x74\xF4")


def exit_with_byte(addr: int) -> bytes:  # movzx eax, byte [addr] ; out 0xf4, eax ; hlt
    return b"\x0F\xB6\x05" + addr.to_bytes(4, "little") + b"\xE7\xF4\xF4"


def driver_code(queues: int, wait_used: int, status_addr: int, irq: bool = True) -> bytes:
    r = lambda off: BASE + off  # noqa: E731
    code = b""
    if irq:  # IOAPIC pin GSI -> vector, edge, unmasked, APIC 0; LAPIC software-enabled
        code += store(L.IOAPIC_ADDR, 0x10 + 2 * GSI) + store(L.IOAPIC_ADDR + 0x10, VECTOR)
        code += store(L.IOAPIC_ADDR, 0x11 + 2 * GSI) + store(L.IOAPIC_ADDR + 0x10, 0)
        code += store(L.LAPIC_ADDR + 0xF0, 0x1FF)
    code += store(r(V.VIRTIO_MMIO_STATUS), 3)
    code += store(r(V.VIRTIO_MMIO_DRIVER_FEATURES_SEL), 1) + store(r(V.VIRTIO_MMIO_DRIVER_FEATURES), 1)
    code += store(r(V.VIRTIO_MMIO_STATUS), 3 | V.VIRTIO_CONFIG_S_FEATURES_OK)
    for q in range(queues):
        off = q * 0x4000
        code += store(r(V.VIRTIO_MMIO_QUEUE_SEL), q) + store(r(V.VIRTIO_MMIO_QUEUE_NUM), QSIZE)
        code += store(r(V.VIRTIO_MMIO_QUEUE_DESC_LOW), DESC + off)
        code += store(r(V.VIRTIO_MMIO_QUEUE_AVAIL_LOW), AVAIL + off)
        code += store(r(V.VIRTIO_MMIO_QUEUE_USED_LOW), USED + off)
        code += store(r(V.VIRTIO_MMIO_QUEUE_READY), 1)
    code += store(r(V.VIRTIO_MMIO_STATUS), 0xF)
    code += store(r(V.VIRTIO_MMIO_QUEUE_NOTIFY), queues - 1)
    code += wait_u16(USED + (queues - 1) * 0x4000 + 2, wait_used)
    if irq:
        code += wait_irr(VECTOR)
    return code + exit_with_byte(status_addr)


def _needs_eventfds():
    with Kvm() as kvm:
        if kvm.check_extension(abi.KvmCap.IOEVENTFD) <= 0 or kvm.check_extension(abi.KvmCap.IRQFD) <= 0:
            pytest.skip("this /dev/kvm lacks KVM_CAP_IOEVENTFD or KVM_CAP_IRQFD")


def _chain(mem, index, segs):
    for i, (addr, length, flags) in enumerate(segs):
        last = i == len(segs) - 1
        mem.write(DESC + 16 * (index + i), V.VIRTQ_DESC.pack(addr, length, flags | (0 if last else V.VRING_DESC_F_NEXT),
                                                             0 if last else index + i + 1))


def _run(mem, code, device, timeout=20.0):
    mem.write(guests.LOAD, code)
    with Machine(mem, guests.flat32(), console=None, timeout=timeout, virtio=[device]) as m:
        assert m.virtio.uses_ioeventfd and m.virtio.uses_irqfd
        kicks = []
        m.virtio.transports[0].kick = kicks.append  # reached only if a QueueNotify write exits
        r = m.run()
        return r, kicks


def test_guest_reads_and_writes_a_disk_through_ioeventfd_and_irqfd(tmp_path):
    _needs_eventfds()
    img = tmp_path / "disk.img"
    img.write_bytes(os.urandom(8 * 512))
    payload = os.urandom(512)
    W = V.VRING_DESC_F_WRITE
    with GuestMemory([(0, 1 << 20)]) as mem:
        mem.write(0x20000, V.VIRTIO_BLK_OUTHDR.pack(V.VIRTIO_BLK_T_IN, 0, 3))
        mem.write(0x20100, V.VIRTIO_BLK_OUTHDR.pack(V.VIRTIO_BLK_T_OUT, 0, 5))
        mem.write(0x20200, V.VIRTIO_BLK_OUTHDR.pack(V.VIRTIO_BLK_T_FLUSH, 0, 0))
        mem.write(0x21000, payload)
        mem.write(0x20080, b"\xee\xee\xee")
        _chain(mem, 0, [(0x20000, 16, 0), (0x30000, 1024, W), (0x20080, 1, W)])
        _chain(mem, 3, [(0x20100, 16, 0), (0x21000, 512, 0), (0x20081, 1, W)])
        _chain(mem, 6, [(0x20200, 16, 0), (0x20082, 1, W)])
        mem.write(AVAIL, struct.pack("<HHHHH", 0, 3, 0, 3, 6))
        device = VirtioBlock(str(img))
        r, kicks = _run(mem, driver_code(1, 3, 0x20082), device)
        assert r.reason == "debug_exit", r.crash_report
        assert r.exit_code == V.VIRTIO_BLK_S_OK  # the flush's status
        assert mem.read(0x20080, 3) == b"\0\0\0"
        assert mem.read(0x30000, 1024) == img.read_bytes()[3 * 512:5 * 512]
        assert img.read_bytes()[5 * 512:6 * 512] == payload
        assert device.flushes == 1
        assert kicks == []  # the kick never exited to user space: KVM signalled the eventfd itself
        used = [V.VIRTQ_USED_ELEM.unpack(mem.read(USED + 4 + 8 * i, 8)) for i in range(3)]
        assert used == [(0, 1025), (3, 1), (6, 1)]


def test_guest_console_output_without_exits():
    _needs_eventfds()
    text = b"hello through virtio-console\n" * 20
    out = []
    with GuestMemory([(0, 1 << 20)]) as mem:
        mem.write(0x40000, text)
        # queue 1 (transmitq) rings at +0x4000: one chain of the whole text
        mem.write(DESC + 0x4000, V.VIRTQ_DESC.pack(0x40000, len(text), 0, 0))
        mem.write(AVAIL + 0x4000, struct.pack("<HHH", 0, 1, 0))
        mem.write(0x50000, b"\x2a")
        dev = VirtioConsole(out.append)
        r, kicks = _run(mem, driver_code(2, 1, 0x50000), dev)
        assert r.reason == "debug_exit" and r.exit_code == 0x2A, r.crash_report
        assert b"".join(out) == text and kicks == []


def test_hostile_guest_gets_needs_reset_not_a_dead_vmm(tmp_path):
    _needs_eventfds()
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(4096))
    with GuestMemory([(0, 1 << 20)]) as mem:
        # a two-descriptor loop; the guest then reads Status back and exits with it
        mem.write(DESC, V.VIRTQ_DESC.pack(0x20000, 16, V.VRING_DESC_F_NEXT, 1))
        mem.write(DESC + 16, V.VIRTQ_DESC.pack(0x20000, 16, V.VRING_DESC_F_NEXT, 0))
        mem.write(AVAIL, struct.pack("<HHH", 0, 1, 0))
        code = driver_code(1, 0, 0, irq=True)
        # replace "wait for used idx" with "wait for the config interrupt" then exit with Status
        cut = code.index(wait_u16(USED + 2, 0))
        code = code[:cut] + wait_irr(VECTOR) + b"\xA1" + (BASE + V.VIRTIO_MMIO_STATUS).to_bytes(4, "little") \
            + b"\xE7\xF4\xF4"
        r, _ = _run(mem, code, VirtioBlock(str(img)))
        assert r.reason == "debug_exit", r.crash_report
        assert r.exit_code & V.VIRTIO_CONFIG_S_NEEDS_RESET
        assert any(e["kind"] == "device-error" and "longer than the queue" in e["source"] for e in r.events)


def test_console_bytes_kicked_just_before_the_vm_stops_are_not_lost():
    _needs_eventfds()
    text = b"last words before poweroff\n"
    out = []
    with GuestMemory([(0, 1 << 20)]) as mem:
        mem.write(0x40000, text)
        mem.write(DESC + 0x4000, V.VIRTQ_DESC.pack(0x40000, len(text), 0, 0))
        mem.write(AVAIL + 0x4000, struct.pack("<HHH", 0, 1, 0))
        code = driver_code(2, 1, 0, irq=False)
        cut = code.index(wait_u16(USED + 0x4000 + 2, 1))
        code = code[:cut] + guests.debug_exit(0)  # kick, then stop at once: the device thread drains on stop
        r, _ = _run(mem, code, VirtioConsole(out.append))
        assert r.reason == "debug_exit"
        assert b"".join(out) == text
