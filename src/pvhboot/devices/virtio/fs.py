"""virtio-fs (virtio 1.2 §5.11) whose queues a vhost-user back end (virtiofsd) serves.

pvhboot keeps the virtio-mmio registers and the config space (tag, number of request queues); on
DRIVER_OK it hands each queue to the back end: the guest RAM's memfds (SET_MEM_TABLE), ring sizes and
addresses, the kick eventfd (which KVM signals on QueueNotify through KVM_IOEVENTFD) and the call
eventfd (which KVM turns into the interrupt through KVM_IRQFD).  From then on a FUSE request goes
guest -> KVM -> virtiofsd -> KVM -> guest with no Python on the way.  Because the interrupt never
passes through this process, the transport reports "used buffer" in InterruptStatus whenever the
driver is running (mmio.py ``external_queues``).

The hand-over itself runs on the device's own control thread, not on the vCPU thread whose
Status write (DRIVER_OK, reset) triggered it: vCPU threads run under a seccomp allow-list that has
no socket calls (vmm/seccomp.py).  A kick the guest makes before the back end has its kick fd waits
in the eventfd's counter, which the back end reads when it starts polling.
"""
from __future__ import annotations

import queue
import threading

from . import spec
from .device import VirtioDevice
from .vhost_user import VHOST_USER_F_PROTOCOL_FEATURES, VhostUserClient, VhostUserError

QUEUE_SIZE = 1024  # as QEMU's vhost-user-fs default queue-size
REQUEST_QUEUES = 1
# Ring features both sides may use: the back end implements them (libvhost-user offers them).
_PASS_THROUGH = ((1 << spec.VIRTIO_RING_F_INDIRECT_DESC) | (1 << spec.VIRTIO_RING_F_EVENT_IDX)
                 | (1 << spec.VIRTIO_F_VERSION_1))


class VirtioFs(VirtioDevice):
    device_id = spec.VIRTIO_ID_FS
    queue_sizes = (QUEUE_SIZE,) * (1 + REQUEST_QUEUES)  # hiprio, then the request queue(s)
    external_queues = True
    needs_shared_memory = True

    def __init__(self, socket_path: str, tag: str) -> None:
        raw = tag.encode()
        if not raw or len(raw) > spec.VIRTIO_FS_TAG_BYTES:
            raise ValueError(f"virtio-fs tag {tag!r} must be 1..{spec.VIRTIO_FS_TAG_BYTES} bytes")
        self.tag = tag
        self.name = f"virtio-fs {tag}"
        self._config = raw.ljust(spec.VIRTIO_FS_TAG_BYTES, b"\0") + REQUEST_QUEUES.to_bytes(4, "little")
        self.client = VhostUserClient(socket_path)
        self.backend_features = self.client.get_features()
        self.client.set_owner()
        self.features = self.backend_features & _PASS_THROUGH
        self.transport = None  # set by the VMM (the kick and call eventfds are the transport's)
        self._started: list[int] = []
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._control = threading.Thread(target=self._control_main, name=f"pvhboot-vhost-user-{tag}", daemon=True)
        self._control.start()

    def config(self) -> bytes:
        return self._config

    def activate(self, mem, queues, negotiated: int) -> None:
        # Called on a vCPU thread: take a snapshot of the rings now, talk to the back end later.
        rings = [(i, q.size, q.desc_addr, q.used_addr, q.avail_addr) for i, q in enumerate(queues) if q.ready]
        self._jobs.put(lambda: self._hand_over(mem, rings, negotiated))

    def _hand_over(self, mem, rings, negotiated: int) -> None:
        t = self.transport
        call_fd = getattr(t.interrupt, "fd", None)
        if call_fd is None:
            raise VhostUserError("virtio-fs needs KVM_IRQFD (the back end signals the guest directly)")
        c = self.client
        c.set_features(negotiated & self.backend_features & ~(1 << VHOST_USER_F_PROTOCOL_FEATURES))
        c.set_mem_table([(r.guest_addr, r.size, r.host_addr, r.fd) for r in mem.regions])
        for i, size, desc, used, avail in rings:
            c.set_vring_num(i, size)
            c.set_vring_base(i, 0)
            c.set_vring_addr(i, _host(mem, desc), _host(mem, used), _host(mem, avail))
            c.set_vring_call(i, call_fd)
            c.set_vring_kick(i, t.notify_fds[i])
            self._started.append(i)

    def reset(self) -> None:
        self._jobs.put(self._stop_rings)

    def _stop_rings(self) -> None:
        started, self._started = self._started, []
        for i in started:
            self.client.get_vring_base(i)  # stops the ring in the back end

    def _control_main(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except (VhostUserError, OSError) as e:  # a dead back end is also reported by its watcher
                if self.transport is not None:
                    self.transport.fail(f"vhost-user back end: {e}")

    def close(self) -> None:
        self._jobs.put(None)
        self._control.join(5)
        self.client.close()



def _host(mem, gpa: int) -> int:
    """pvhboot's own virtual address of guest-physical ``gpa`` (vhost-user ring addresses are the
    front end's virtual addresses, translated by the back end through SET_MEM_TABLE)."""
    for r in mem.regions:
        if r.guest_addr <= gpa < r.end:
            return r.host_addr + (gpa - r.guest_addr)
    raise VhostUserError(f"ring address {gpa:#x} is not in guest RAM")
