"""virtio-mmio transport + split virtqueues driven from Python (a fake driver over GuestMemory)."""
from __future__ import annotations

import struct

import pytest
from virtio_driver import RAM, FakeDriver

from pvhboot.devices.virtio import CountingInterrupt, VirtioConsole, VirtioMmio, spec
from pvhboot.devices.virtio.queue import SplitQueue, VirtqueueError
from pvhboot.memory import GuestMemory


@pytest.fixture
def mem():
    with GuestMemory([(0, RAM)]) as m:
        yield m


def make_console(mem):
    out = []
    dev = VirtioConsole(out.append)
    irq = CountingInterrupt()
    errors = []
    t = VirtioMmio(dev, mem, irq, on_error=errors.append)
    dev.transport = t
    return t, dev, irq, out, errors


def test_identity_registers(mem):
    t, *_ = make_console(mem)
    assert t.read(spec.VIRTIO_MMIO_MAGIC_VALUE, 4) == 0x74726976
    assert t.read(spec.VIRTIO_MMIO_VERSION, 4) == 2
    assert t.read(spec.VIRTIO_MMIO_DEVICE_ID, 4) == spec.VIRTIO_ID_CONSOLE
    assert t.read(spec.VIRTIO_MMIO_MAGIC_VALUE, 1) == 0  # registers are 32-bit only
    t.write(spec.VIRTIO_MMIO_DEVICE_FEATURES_SEL, 4, 1)
    assert t.read(spec.VIRTIO_MMIO_DEVICE_FEATURES, 4) & 1  # VERSION_1 is bit 32
    t.write(spec.VIRTIO_MMIO_QUEUE_SEL, 4, 7)
    assert t.read(spec.VIRTIO_MMIO_QUEUE_NUM_MAX, 4) == 0  # no such queue
    t.close()


def test_features_ok_refused_for_legacy_or_unknown_features(mem):
    t, *_ = make_console(mem)
    d = FakeDriver(t, mem, features=0)  # no VERSION_1: a legacy driver
    assert not d.negotiate() & spec.VIRTIO_CONFIG_S_FEATURES_OK
    d = FakeDriver(t, mem, features=(1 << spec.VIRTIO_F_VERSION_1) | (1 << 40))  # not offered
    assert not d.negotiate() & spec.VIRTIO_CONFIG_S_FEATURES_OK
    d = FakeDriver(t, mem, features=1 << spec.VIRTIO_F_VERSION_1)
    assert d.negotiate() & spec.VIRTIO_CONFIG_S_FEATURES_OK
    t.close()


@pytest.mark.parametrize("event_idx", [False, True])
def test_console_output_and_interrupts(mem, event_idx):
    t, dev, irq, out, errors = make_console(mem)
    feats = (1 << spec.VIRTIO_F_VERSION_1) | ((1 << spec.VIRTIO_RING_F_EVENT_IDX) if event_idx else 0)
    d = FakeDriver(t, mem, features=feats)
    d.start([0, 1])
    assert t.driver_ok
    for i in range(3):
        d.add_chain(1, [d.buffer(f"line {i}\n".encode())], [])
    d.kick(1)
    assert b"".join(out) == b"line 0\nline 1\nline 2\n"
    assert len(d.used(1)) == 3
    assert irq.count == 1 and t.read(spec.VIRTIO_MMIO_INTERRUPT_STATUS, 4) == spec.VIRTIO_MMIO_INT_VRING
    t.write(spec.VIRTIO_MMIO_INTERRUPT_ACK, 4, spec.VIRTIO_MMIO_INT_VRING)
    assert t.read(spec.VIRTIO_MMIO_INTERRUPT_STATUS, 4) == 0
    if event_idx:
        assert d.avail_event(1) == 3  # the device asks to be kicked when the driver passes 3
        d.set_used_event(1, 10)  # the driver wants an interrupt only after used idx passes 10
        d.add_chain(1, [d.buffer(b"x")], [])
        d.kick(1)
        assert irq.count == 1  # used idx 4: suppressed
    assert errors == []
    t.close()


def test_console_input_fills_posted_buffers(mem):
    t, dev, irq, out, errors = make_console(mem)
    d = FakeDriver(t, mem)
    d.start([0, 1])
    dev.feed(b"hello")  # nothing posted yet: kept
    t.process(0)
    assert d.used(0) == []
    a, n = d.buffer(3)
    b, m = d.buffer(16)
    d.add_chain(0, [], [(a, n)])
    d.add_chain(0, [], [(b, m)])
    d.kick(0)
    got = d.used(0)
    assert [length for _, length in got] == [3, 2]
    assert mem.read(a, 3) + mem.read(b, 2) == b"hello"
    t.close()


def _broken(mem, build):
    """Start a console, let ``build(driver)`` publish something hostile on the tx queue, kick."""
    t, dev, irq, out, errors = make_console(mem)
    d = FakeDriver(t, mem)
    d.start([0, 1])
    build(d)
    d.kick(1)
    return t, irq, errors


@pytest.mark.parametrize("name,build,match", [
    ("loop", lambda d: (d.write_desc(1, 0, 0x100000, 4, spec.VRING_DESC_F_NEXT, 1),
                        d.write_desc(1, 1, 0x100000, 4, spec.VRING_DESC_F_NEXT, 0), d.publish(1, 0)),
     "longer than the queue size"),
    ("out of RAM", lambda d: (d.write_desc(1, 0, RAM - 2, 4, 0, 0), d.publish(1, 0)), "not inside guest RAM"),
    ("huge length", lambda d: (d.write_desc(1, 0, 0x100000, 0xFFFFFFFF, 0, 0), d.publish(1, 0)),
     "not inside guest RAM"),
    ("head out of table", lambda d: d.publish(1, 99), "outside the descriptor table"),
    ("next out of table", lambda d: (d.write_desc(1, 0, 0x100000, 4, spec.VRING_DESC_F_NEXT, 500),
                                     d.publish(1, 0)), "outside the table"),
    ("indirect", lambda d: (d.write_desc(1, 0, 0x100000, 16, spec.VRING_DESC_F_INDIRECT, 0), d.publish(1, 0)),
     "indirect"),
    ("readable after writable", lambda d: (
        d.write_desc(1, 0, 0x100000, 4, spec.VRING_DESC_F_WRITE | spec.VRING_DESC_F_NEXT, 1),
        d.write_desc(1, 1, 0x100000, 4, 0, 0), d.publish(1, 0)), "readable after"),
    ("avail idx jump", lambda d: d.mem.write(d.rings(1)[1] + 2, struct.pack("<H", 40000)), "more than the queue"),
])
def test_hostile_chains_set_needs_reset(mem, name, build, match):
    t, irq, errors = _broken(mem, build)
    st = t.read(spec.VIRTIO_MMIO_STATUS, 4)
    assert st & spec.VIRTIO_CONFIG_S_NEEDS_RESET, name
    assert t.read(spec.VIRTIO_MMIO_INTERRUPT_STATUS, 4) & spec.VIRTIO_MMIO_INT_CONFIG
    assert irq.count == 1
    assert len(errors) == 1 and match in errors[0], errors
    # The driver's way out: a reset brings the device back to life.
    t.write(spec.VIRTIO_MMIO_STATUS, 4, 0)
    assert t.read(spec.VIRTIO_MMIO_STATUS, 4) == 0
    t.close()


def test_queue_layout_checked_at_ready(mem):
    t, dev, irq, out, errors = make_console(mem)
    d = FakeDriver(t, mem)
    d.negotiate()
    t.write(spec.VIRTIO_MMIO_QUEUE_SEL, 4, 0)
    t.write(spec.VIRTIO_MMIO_QUEUE_NUM, 4, 12)  # not a power of two
    t.write(spec.VIRTIO_MMIO_QUEUE_READY, 4, 1)
    assert t.read(spec.VIRTIO_MMIO_QUEUE_READY, 4) == 0
    assert t.read(spec.VIRTIO_MMIO_STATUS, 4) & spec.VIRTIO_CONFIG_S_NEEDS_RESET
    t.write(spec.VIRTIO_MMIO_STATUS, 4, 0)
    d.negotiate()
    t.write(spec.VIRTIO_MMIO_QUEUE_NUM, 4, 16)
    t.write(spec.VIRTIO_MMIO_QUEUE_DESC_LOW, 4, RAM - 0x10)  # table runs off the end of RAM
    t.write(spec.VIRTIO_MMIO_QUEUE_READY, 4, 1)
    assert "not inside guest RAM" in errors[-1]
    t.close()


def test_vring_need_event_matches_linux():
    # include/uapi/linux/virtio_ring.h: (u16)(new_idx - event_idx - 1) < (u16)(new_idx - old)
    assert spec.vring_need_event(0, 1, 0)
    assert not spec.vring_need_event(5, 3, 0)
    assert spec.vring_need_event(0xFFFF, 1, 0xFFFE)  # wraps
    assert not spec.vring_need_event(2, 2, 0)


def test_split_queue_rejects_bad_max_size():
    with pytest.raises(ValueError):
        SplitQueue(0)
    q = SplitQueue(8)
    q.size = 8
    with GuestMemory([(0, 1 << 16)]) as m:
        q.desc_addr, q.avail_addr, q.used_addr = 0x1000, 0x2000, 0x3001
        with pytest.raises(VirtqueueError, match="aligned"):
            q.check_layout(m)
