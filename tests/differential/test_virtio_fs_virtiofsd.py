"""virtio-fs through QEMU's real virtiofsd, no KVM: pvhboot's vhost-user front end hands the queues to
the daemon (SET_MEM_TABLE with the memfd guest RAM, vring num/addr/base/kick/call), then a Python
"driver" posts FUSE_INIT and FUSE_LOOKUP on the request queue, kicks the eventfd KVM would signal and
waits on the call eventfd KVM would turn into an interrupt: the daemon answers straight into guest RAM."""
from __future__ import annotations

import os
import select
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from virtio_driver import RAM, FakeDriver  # noqa: E402

from pvhboot.devices.virtio import EventFdInterrupt, VirtioMmio, spec  # noqa: E402
from pvhboot.memory import GuestMemory  # noqa: E402

FUSE_LOOKUP, FUSE_INIT = 1, 26
FUSE_ROOT_ID = 1
IN_HEADER = struct.Struct("<IIQQIIIHH")  # struct fuse_in_header (40 bytes)
OUT_HEADER = struct.Struct("<IiQ")  # struct fuse_out_header (16 bytes)
INIT_IN = struct.Struct("<IIII")  # major, minor, max_readahead, flags (protocol 7.31 layout)


def _virtiofsd():
    from pvhboot.errors import ConfigError
    from pvhboot.vmm.virtiofsd import find_virtiofsd

    try:
        path = find_virtiofsd()
    except ConfigError as e:
        pytest.skip(str(e))
    if os.geteuid() != 0:
        pytest.skip("virtiofsd's namespace sandbox needs root")
    return path


def _request(d, call_fd, opcode, unique, nodeid, body: bytes, out_len: int):
    req = IN_HEADER.pack(IN_HEADER.size + len(body), opcode, unique, nodeid, 0, 0, 0, 0, 0) + body
    reply = d.buffer(out_len)
    head = d.add_chain(1, [d.buffer(req)], [reply])
    d.set_used_event(1, d.used_seen[1])  # event index: interrupt me for the next used entry (as Linux)
    d.w(spec.VIRTIO_MMIO_QUEUE_NOTIFY, 1)  # the transport signals the kick eventfd, as KVM would
    used = []
    for _ in range(10):  # libvhost-user also signals once when the call fd is set: wait for the entry
        ready, _, _ = select.select([call_fd], [], [], 10)
        assert ready, "virtiofsd never signalled the call eventfd"
        os.eventfd_read(call_fd)
        used = d.used(1)
        if used:
            break
    assert [u[0] for u in used] == [head]
    d.reclaim(1, head)
    data = d.mem.read(reply[0], used[0][1])
    length, error, uniq = OUT_HEADER.unpack(data[:16])
    assert uniq == unique and length == len(data)
    return error, data[16:]


def test_fuse_init_and_lookup_through_virtiofsd(tmp_path):
    from pvhboot.devices.virtio.fs import VirtioFs
    from pvhboot.vmm.virtiofsd import Virtiofsd

    binary = _virtiofsd()
    share = tmp_path / "share"
    share.mkdir()
    (share / "hello.txt").write_bytes(b"x" * 1234)
    daemon = Virtiofsd(str(share), "hosttag", binary=binary).start()
    call_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        with GuestMemory([(0, RAM)], shared=True) as mem:
            dev = VirtioFs(daemon.socket_path, "hosttag")
            t = VirtioMmio(dev, mem, EventFdInterrupt(call_fd))
            dev.transport = t
            assert t.read(spec.VIRTIO_MMIO_DEVICE_ID, 4) == spec.VIRTIO_ID_FS
            assert bytes(t.read(spec.VIRTIO_MMIO_CONFIG + i, 1) for i in range(7)) == b"hosttag"
            d = FakeDriver(t, mem, queue_size=64)
            d.start([0, 1])
            assert t.driver_ok
            # used-buffer bit always reported: the interrupt bypassed the transport (irqfd)
            assert t.read(spec.VIRTIO_MMIO_INTERRUPT_STATUS, 4) & spec.VIRTIO_MMIO_INT_VRING
            err, out = _request(d, call_fd, FUSE_INIT, 1, 0, INIT_IN.pack(7, 31, 0, 0), 16 + 64)
            assert err == 0 and struct.unpack_from("<I", out)[0] == 7  # major
            err, out = _request(d, call_fd, FUSE_LOOKUP, 2, FUSE_ROOT_ID, b"hello.txt\0", 16 + 128)
            assert err == 0
            assert struct.unpack_from("<Q", out, 40 + 8)[0] == 1234  # fuse_entry_out.attr.size
            err, _ = _request(d, call_fd, FUSE_LOOKUP, 3, FUSE_ROOT_ID, b"missing\0", 16 + 128)
            assert err == -2  # -ENOENT
            t.write(spec.VIRTIO_MMIO_STATUS, 4, 0)  # reset: GET_VRING_BASE stops the rings
            t.close()
    finally:
        os.close(call_fd)
        daemon.stop()


def test_daemon_death_is_reported(tmp_path):
    from pvhboot.vmm.virtiofsd import Virtiofsd

    binary = _virtiofsd()
    daemon = Virtiofsd(str(tmp_path), "t", binary=binary).start()
    messages = []
    import threading

    got = threading.Event()
    daemon.watch(lambda m: (messages.append(m), got.set()))
    daemon.proc.kill()
    assert got.wait(10)
    assert "exited with status" in messages[0] and str(tmp_path) in messages[0]
    daemon.stop()
