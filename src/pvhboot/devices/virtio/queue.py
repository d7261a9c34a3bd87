"""Split virtqueues (virtio 1.2 §2.7) over guest memory, from the device's side, with event index.

The driver owns the descriptor table and the avail ring; the device reads them and writes the used
ring.  Everything read from guest memory is hostile: :meth:`SplitQueue.pop` checks each chain before a
device touches a byte of it and raises :class:`VirtqueueError` for a head or ``next`` outside the
table, a loop or a chain longer than the queue (§2.7.5.3.1: "the driver MUST NOT create a descriptor
chain longer than the Queue Size"), a buffer outside guest RAM, an indirect descriptor (not offered)
and a device-readable descriptor after a device-writable one (§2.7.4.2).  The transport turns that
error into DEVICE_NEEDS_RESET; the VMM never hangs or dies on it.

``mem`` is anything with ``read(gpa, n)``, ``write(gpa, data)``, ``view(gpa, n)`` and
``contains(gpa, n)``: :class:`pvhboot.memory.GuestMemory` in the VMM and in the unit tests.
"""
from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field

from . import spec

_U16 = struct.Struct("<H")
_barrier_lock = threading.Lock()


def full_barrier() -> None:
    """A full memory barrier (x86 may reorder a store before a later load).  An uncontended lock
    acquire is a locked read-modify-write, which orders both ways; the event-index handshake below
    needs it between "write avail_event / used idx" and "read avail idx / used_event"."""
    _barrier_lock.acquire()
    _barrier_lock.release()


class VirtqueueError(Exception):
    """The driver broke the virtqueue rules; the device must stop using the queue (NEEDS_RESET)."""


@dataclass
class Segment:
    addr: int
    length: int
    writable: bool


@dataclass
class Chain:
    """One popped descriptor chain: device-readable segments, then device-writable ones."""

    head: int
    readable: list[Segment] = field(default_factory=list)
    writable: list[Segment] = field(default_factory=list)

    @property
    def readable_bytes(self) -> int:
        return sum(s.length for s in self.readable)

    @property
    def writable_bytes(self) -> int:
        return sum(s.length for s in self.writable)


class SplitQueue:
    """One virtqueue's configuration (what the transport registers set) and ring state."""

    def __init__(self, max_size: int) -> None:
        if not 1 <= max_size <= spec.VIRTQ_MAX_SIZE:
            raise ValueError(f"queue size {max_size} out of range")
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size
        self.ready = False
        self.desc_addr = self.avail_addr = self.used_addr = 0
        self.event_idx = False  # VIRTIO_RING_F_EVENT_IDX negotiated
        self.last_avail_idx = 0  # next avail ring slot the device reads
        self.used_idx = 0  # next used ring slot the device writes
        self.signalled_used = 0  # used idx when the driver was last notified (event index)
        self.broken: str | None = None  # why the queue was given up on

    # --- set-up checks (QueueReady / DRIVER_OK) ---
    def check_layout(self, mem) -> None:
        """§2.7: a size the device accepts, aligned rings, every ring byte inside guest RAM."""
        n = self.size
        if not 1 <= n <= self.max_size or n & (n - 1):
            raise VirtqueueError(f"queue size {n} is not a power of two in 1..{self.max_size}")
        for what, addr, size, align in (("descriptor table", self.desc_addr, spec.desc_table_size(n), spec.DESC_ALIGN),
                                        ("avail ring", self.avail_addr, spec.avail_ring_size(n), spec.AVAIL_ALIGN),
                                        ("used ring", self.used_addr, spec.used_ring_size(n), spec.USED_ALIGN)):
            if addr % align:
                raise VirtqueueError(f"{what} at {addr:#x} is not {align}-byte aligned")
            if not mem.contains(addr, size):
                raise VirtqueueError(f"{what} {addr:#x}+{size:#x} is not inside guest RAM")

    # --- ring access ---
    def _avail_idx(self, mem) -> int:
        return _U16.unpack(mem.read(self.avail_addr + 2, 2))[0]

    def has_work(self, mem) -> bool:
        return self._avail_idx(mem) != self.last_avail_idx

    def pop(self, mem) -> Chain | None:
        """The next available chain, checked, or None.  Raises VirtqueueError (the queue is then broken)."""
        if self.broken:
            return None
        try:
            avail = self._avail_idx(mem)
            pending = (avail - self.last_avail_idx) & 0xFFFF
            if pending == 0:
                return None
            if pending > self.size:
                raise VirtqueueError(f"avail idx {avail} is {pending} entries ahead of the device's "
                                     f"{self.last_avail_idx}, more than the queue size {self.size}")
            slot = self.last_avail_idx % self.size
            head = _U16.unpack(mem.read(self.avail_addr + 4 + 2 * slot, 2))[0]
            chain = self._walk(mem, head)
        except VirtqueueError as e:
            self.broken = str(e)
            raise
        self.last_avail_idx = (self.last_avail_idx + 1) & 0xFFFF
        return chain

    def _walk(self, mem, head: int) -> Chain:
        n = self.size
        if head >= n:
            raise VirtqueueError(f"chain head {head} is outside the descriptor table (size {n})")
        chain = Chain(head)
        index = head
        for _ in range(n):  # a chain has at most `size` descriptors: a loop runs out of this
            addr, length, flags, nxt = spec.VIRTQ_DESC.unpack(mem.read(self.desc_addr + 16 * index, 16))
            if flags & spec.VRING_DESC_F_INDIRECT:
                raise VirtqueueError(f"descriptor {index} is indirect; VIRTIO_F_INDIRECT_DESC was not offered")
            if length and not mem.contains(addr, length):
                raise VirtqueueError(f"descriptor {index}: buffer {addr:#x}+{length:#x} is not inside guest RAM")
            writable = bool(flags & spec.VRING_DESC_F_WRITE)
            if not writable and chain.writable:
                raise VirtqueueError(f"descriptor {index} is device-readable after a device-writable one")
            (chain.writable if writable else chain.readable).append(Segment(addr, length, writable))
            if not flags & spec.VRING_DESC_F_NEXT:
                return chain
            if nxt >= n:
                raise VirtqueueError(f"descriptor {index} links to {nxt}, outside the table (size {n})")
            index = nxt
        raise VirtqueueError(f"chain from head {head} is longer than the queue size {n} (a loop?)")

    def push_used(self, mem, head: int, written: int) -> None:
        """Return chain ``head`` to the driver with ``written`` bytes written into it (§2.7.8)."""
        slot = self.used_idx % self.size
        mem.write(self.used_addr + 4 + 8 * slot, spec.VIRTQ_USED_ELEM.pack(head, written))
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        # x86 keeps stores in order: the element is visible before the index that publishes it.
        mem.write(self.used_addr + 2, _U16.pack(self.used_idx))

    def set_avail_event(self, mem) -> None:
        """Event index (§2.7.10): ask for a kick only once the driver passes what we have consumed."""
        if self.event_idx:
            mem.write(self.used_addr + 4 + 8 * self.size, _U16.pack(self.last_avail_idx))

    def needs_notification(self, mem) -> bool:
        """Whether to interrupt the driver for the used entries pushed since the last notification."""
        full_barrier()  # the used idx store must be visible before used_event / flags are read
        new, old = self.used_idx, self.signalled_used
        if new == old:
            return False
        if self.event_idx:
            used_event = _U16.unpack(mem.read(self.avail_addr + 4 + 2 * self.size, 2))[0]
            self.signalled_used = new
            return spec.vring_need_event(used_event, new, old)
        self.signalled_used = new
        flags = _U16.unpack(mem.read(self.avail_addr, 2))[0]
        return not flags & spec.VRING_AVAIL_F_NO_INTERRUPT

    def drain(self, mem):
        """Iterate over available chains until the ring is empty, re-arming the event index with the
        race-free pattern (publish avail_event, barrier, look again) so no kick is lost."""
        while True:
            chain = self.pop(mem)
            if chain is None:
                self.set_avail_event(mem)
                full_barrier()
                if self.broken or not self.has_work(mem):
                    return
                continue
            yield chain


def spans(segments: list[Segment], skip: int = 0, limit: int | None = None):
    """(guest address, length) runs of ``segments`` from byte ``skip``, at most ``limit`` bytes in all."""
    left = limit
    for s in segments:
        if skip >= s.length:
            skip -= s.length
            continue
        n = s.length - skip if left is None else min(s.length - skip, left)
        if n <= 0:
            return
        yield s.addr + skip, n
        if left is not None:
            left -= n
        skip = 0


def gather(mem, segments: list[Segment], skip: int = 0, limit: int | None = None) -> bytes:
    """The bytes of ``segments`` from offset ``skip`` (at most ``limit`` bytes)."""
    return b"".join(mem.read(addr, n) for addr, n in spans(segments, skip, limit))


def scatter(mem, segments: list[Segment], data: bytes, skip: int = 0) -> int:
    """Write ``data`` across ``segments`` from offset ``skip``; returns the bytes written."""
    done = 0
    for addr, n in spans(segments, skip, len(data)):
        mem.write(addr, data[done:done + n])
        done += n
    return done


def views(mem, segments: list[Segment], skip: int = 0, limit: int | None = None) -> list[memoryview]:
    """Zero-copy writable views of ``segments`` (for preadv/pwritev straight into guest RAM)."""
    return [mem.view(addr, n) for addr, n in spans(segments, skip, limit)]
