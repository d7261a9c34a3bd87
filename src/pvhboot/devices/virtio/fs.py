"""virtio-fs (virtio 1.2 §5.11) whose queues a vhost-user back end (virtiofsd) serves.

pvhboot keeps the virtio-mmio registers and the config space (tag, number of request queues); on
DRIVER_OK it hands each queue to the back end: the guest RAM's memfds (SET_MEM_TABLE), ring sizes and
addresses, the kick eventfd (which KVM signals on QueueNotify through KVM_IOEVENTFD) and the call
eventfd (which KVM turns into the interrupt through KVM_IRQFD).  From then on a FUSE request goes
guest -> KVM -> virtiofsd -> KVM -> guest with no Python on the way.  Because the interrupt never
passes through this process, the transport reports "used buffer" in InterruptStatus whenever the
driver is running (mmio.py ``external_queues``).
"""
from __future__ import annotations

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

    def config(self) -> bytes:
        return self._config

    def activate(self, mem, queues, negotiated: int) -> None:
        t = self.transport
        call_fd = getattr(t.interrupt, "fd", None)
        if call_fd is None:
            raise VhostUserError("virtio-fs needs KVM_IRQFD (the back end signals the guest directly)")
        c = self.client
        c.set_features(negotiated & self.backend_features & ~(1 << VHOST_USER_F_PROTOCOL_FEATURES))
        c.set_mem_table([(r.guest_addr, r.size, r.host_addr, r.fd) for r in mem.regions])
        for i, q in enumerate(queues):
            if not q.ready:
                continue
            c.set_vring_num(i, q.size)
            c.set_vring_base(i, 0)
            c.set_vring_addr(i, _host(mem, q.desc_addr), _host(mem, q.used_addr), _host(mem, q.avail_addr))
            c.set_vring_call(i, call_fd)
            c.set_vring_kick(i, t.notify_fds[i])
            self._started.append(i)

    def reset(self) -> None:
        try:
            for i in self._started:
                self.client.get_vring_base(i)  # stops the ring in the back end
        except VhostUserError:
            pass  # a dead back end is reported by whoever watches it
        self._started = []

    def close(self) -> None:
        self.client.close()



def _host(mem, gpa: int) -> int:
    """pvhboot's own virtual address of guest-physical ``gpa`` (vhost-user ring addresses are the
    front end's virtual addresses, translated by the back end through SET_MEM_TABLE)."""
    for r in mem.regions:
        if r.guest_addr <= gpa < r.end:
            return r.host_addr + (gpa - r.guest_addr)
    raise VhostUserError(f"ring address {gpa:#x} is not in guest RAM")
