"""A driver-side model of virtio-mmio + split virtqueues, in Python, for the unit tests: it plays the
guest's part over a GuestMemory (register writes through the transport, rings written to memory)."""
from __future__ import annotations

import struct

from pvhboot.devices.virtio import spec
from pvhboot.memory import GuestMemory

RAM = 4 << 20
RING_BASE = 0x10000  # rings of queue q at RING_BASE + q * 0x10000
DATA_BASE = 0x100000  # buffers handed out from here


class FakeDriver:
    def __init__(self, transport, mem: GuestMemory, features: int | None = None, queue_size: int = 16):
        self.t, self.mem = transport, mem
        self.size = queue_size
        self.next_data = DATA_BASE
        self.avail_idx = {}
        self.used_seen = {}
        self.free = {}
        self.features = features

    def w(self, reg, value):
        self.t.write(reg, 4, value)

    def r(self, reg):
        return self.t.read(reg, 4)

    def negotiate(self) -> int:
        assert self.r(spec.VIRTIO_MMIO_MAGIC_VALUE) == spec.VIRTIO_MMIO_MAGIC
        assert self.r(spec.VIRTIO_MMIO_VERSION) == 2
        self.w(spec.VIRTIO_MMIO_STATUS, 0)
        self.w(spec.VIRTIO_MMIO_STATUS, spec.VIRTIO_CONFIG_S_ACKNOWLEDGE)
        self.w(spec.VIRTIO_MMIO_STATUS, spec.VIRTIO_CONFIG_S_ACKNOWLEDGE | spec.VIRTIO_CONFIG_S_DRIVER)
        offered = 0
        for sel in (0, 1):
            self.w(spec.VIRTIO_MMIO_DEVICE_FEATURES_SEL, sel)
            offered |= self.r(spec.VIRTIO_MMIO_DEVICE_FEATURES) << (32 * sel)
        want = offered if self.features is None else self.features
        for sel in (0, 1):
            self.w(spec.VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel)
            self.w(spec.VIRTIO_MMIO_DRIVER_FEATURES, (want >> (32 * sel)) & 0xFFFFFFFF)
        s = spec.VIRTIO_CONFIG_S_ACKNOWLEDGE | spec.VIRTIO_CONFIG_S_DRIVER | spec.VIRTIO_CONFIG_S_FEATURES_OK
        self.w(spec.VIRTIO_MMIO_STATUS, s)
        return self.r(spec.VIRTIO_MMIO_STATUS)

    def rings(self, q):
        base = RING_BASE + q * 0x10000
        return base, base + 0x4000, base + 0x8000  # desc, avail, used

    def setup_queue(self, q, size=None):
        size = size or self.size
        desc, avail, used = self.rings(q)
        self.w(spec.VIRTIO_MMIO_QUEUE_SEL, q)
        assert self.r(spec.VIRTIO_MMIO_QUEUE_NUM_MAX) >= size
        self.w(spec.VIRTIO_MMIO_QUEUE_NUM, size)
        for reg, addr in ((spec.VIRTIO_MMIO_QUEUE_DESC_LOW, desc), (spec.VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail),
                          (spec.VIRTIO_MMIO_QUEUE_USED_LOW, used)):
            self.w(reg, addr & 0xFFFFFFFF)
            self.w(reg + 4, addr >> 32)
        self.w(spec.VIRTIO_MMIO_QUEUE_READY, 1)
        self.avail_idx[q] = 0
        self.used_seen[q] = 0
        self.free[q] = list(range(size))

    def driver_ok(self):
        st = self.r(spec.VIRTIO_MMIO_STATUS)
        self.w(spec.VIRTIO_MMIO_STATUS, st | spec.VIRTIO_CONFIG_S_DRIVER_OK)

    def start(self, queues):
        st = self.negotiate()
        assert st & spec.VIRTIO_CONFIG_S_FEATURES_OK
        for q in queues:
            self.setup_queue(q)
        self.driver_ok()

    def buffer(self, data: bytes | int) -> tuple[int, int]:
        """Allocate a buffer: bytes to fill it with, or a length (zeroed)."""
        n = data if isinstance(data, int) else len(data)
        addr = self.next_data
        self.next_data += (n + 15) // 16 * 16 + 16
        self.mem.write(addr, bytes(n) if isinstance(data, int) else data)
        return addr, n

    def write_desc(self, q, index, addr, length, flags, nxt):
        desc, _, _ = self.rings(q)
        self.mem.write(desc + 16 * index, spec.VIRTQ_DESC.pack(addr, length, flags, nxt))

    def add_chain(self, q, readable: list, writable: list, size=None) -> int:
        """readable/writable: lists of (addr, len); returns the head index; publishes it."""
        segs = [(a, n, 0) for a, n in readable] + [(a, n, spec.VRING_DESC_F_WRITE) for a, n in writable]
        ids = [self.free[q].pop(0) for _ in segs]
        for i, (a, n, f) in enumerate(segs):
            last = i == len(segs) - 1
            self.write_desc(q, ids[i], a, n, f | (0 if last else spec.VRING_DESC_F_NEXT), 0 if last else ids[i + 1])
        self.publish(q, ids[0], size)
        return ids[0]

    def publish(self, q, head, size=None):
        size = size or self.size
        _, avail, _ = self.rings(q)
        idx = self.avail_idx[q]
        self.mem.write(avail + 4 + 2 * (idx % size), struct.pack("<H", head))
        self.avail_idx[q] = (idx + 1) & 0xFFFF
        self.mem.write(avail + 2, struct.pack("<H", self.avail_idx[q]))

    def set_used_event(self, q, value, size=None):
        _, avail, _ = self.rings(q)
        self.mem.write(avail + 4 + 2 * (size or self.size), struct.pack("<H", value))

    def avail_event(self, q, size=None):
        _, _, used = self.rings(q)
        return struct.unpack("<H", self.mem.read(used + 4 + 8 * (size or self.size), 2))[0]

    def kick(self, q):
        self.w(spec.VIRTIO_MMIO_QUEUE_NOTIFY, q)
        self.t.process(q)  # what the worker thread does after the eventfd fires

    def used(self, q) -> list[tuple[int, int]]:
        """New used entries (id, len) since the last call; frees their descriptors (one per id here)."""
        _, _, used = self.rings(q)
        idx = struct.unpack("<H", self.mem.read(used + 2, 2))[0]
        out = []
        while self.used_seen[q] != idx:
            slot = self.used_seen[q] % self.size
            out.append(spec.VIRTQ_USED_ELEM.unpack(self.mem.read(used + 4 + 8 * slot, 8)))
            self.used_seen[q] = (self.used_seen[q] + 1) & 0xFFFF
        return out

    def reclaim(self, q, head):
        desc, _, _ = self.rings(q)
        i = head
        while True:
            self.free[q].append(i)
            _, _, flags, nxt = spec.VIRTQ_DESC.unpack(self.mem.read(desc + 16 * i, 16))
            if not flags & spec.VRING_DESC_F_NEXT:
                return
            i = nxt
