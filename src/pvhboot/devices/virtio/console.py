"""virtio-console (virtio 1.2 §5.3), one port, no features: Linux's hvc0.

transmitq (queue 1) carries guest output: its chains' readable bytes go to ``output(bytes)``, a
whole chain per call, on the device thread (with ioeventfd + irqfd: no exit per byte, no exit per
kick).  receiveq (queue 0) holds empty device-writable buffers the driver posts; :meth:`feed` queues
host input (bounded: ``INPUT_LIMIT`` bytes, the oldest dropped beyond) and fills them as they come.
"""
from __future__ import annotations

import threading
from collections import deque

from . import spec
from .device import VirtioDevice
from .queue import gather, scatter

QUEUE_SIZE = 64
INPUT_LIMIT = 1 << 16


class VirtioConsole(VirtioDevice):
    device_id = spec.VIRTIO_ID_CONSOLE
    queue_sizes = (QUEUE_SIZE, QUEUE_SIZE)
    name = "virtio-console"

    def __init__(self, output) -> None:
        self.output = output
        self._pending: deque[bytes] = deque()
        self._pending_len = 0
        self._lock = threading.Lock()
        self.transport = None  # set by the VMM: feed() raises the interrupt through it
        self._mem = self._rx = None

    def config(self) -> bytes:
        return bytes(12)  # cols, rows, max_nr_ports, emerg_wr: meaningful only with features

    def activate(self, mem, queues, negotiated: int) -> None:
        self._mem, self._rx = mem, queues[spec.VIRTIO_CONSOLE_RX_QUEUE]

    def reset(self) -> None:
        self._mem = self._rx = None

    def process(self, mem, index: int, queue) -> bool:
        if index == spec.VIRTIO_CONSOLE_TX_QUEUE:
            pushed = False
            for chain in queue.drain(mem):
                data = gather(mem, chain.readable)
                if data:
                    self.output(data)
                queue.push_used(mem, chain.head, 0)
                pushed = True
            return pushed
        return self._fill_rx(mem, queue)  # the driver posted receive buffers: maybe input waits

    def feed(self, data: bytes) -> None:
        """Host input for the guest (any thread)."""
        with self._lock:
            self._pending.append(bytes(data))
            self._pending_len += len(data)
            while self._pending_len > INPUT_LIMIT:
                self._pending_len -= len(self._pending.popleft())
        if self.transport is not None:
            self.transport.kick(spec.VIRTIO_CONSOLE_RX_QUEUE)  # the device thread fills the rx queue

    def _fill_rx(self, mem, queue) -> bool:
        pushed = False
        with self._lock:
            while self._pending:
                chain = queue.pop(mem)
                if chain is None:
                    break
                room = chain.writable_bytes
                data = bytearray()
                while self._pending and len(data) < room:
                    piece = self._pending.popleft()
                    take = room - len(data)
                    data += piece[:take]
                    if len(piece) > take:
                        self._pending.appendleft(piece[take:])
                self._pending_len -= len(data)
                queue.push_used(mem, chain.head, scatter(mem, chain.writable, bytes(data)))
                pushed = True
            queue.set_avail_event(mem)
        return pushed
