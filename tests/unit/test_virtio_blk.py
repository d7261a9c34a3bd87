"""virtio-blk over a raw image, driven from Python through the real transport."""
from __future__ import annotations

import os

import pytest
from virtio_driver import RAM, FakeDriver

from pvhboot.devices.virtio import CountingInterrupt, VirtioBlock, VirtioMmio, spec
from pvhboot.errors import ConfigError
from pvhboot.memory import GuestMemory

SECTOR = 512


@pytest.fixture
def mem():
    with GuestMemory([(0, RAM)]) as m:
        yield m


def start(mem, path, ro=False):
    dev = VirtioBlock(str(path), read_only=ro)
    errors = []
    t = VirtioMmio(dev, mem, CountingInterrupt(), on_error=errors.append)
    d = FakeDriver(t, mem)
    d.start([0])
    return t, dev, d, errors


def request(d, rtype, sector, out: bytes = b"", in_len: int = 0):
    hdr = d.buffer(spec.VIRTIO_BLK_OUTHDR.pack(rtype, 0, sector))
    readable = [hdr] + ([d.buffer(out)] if out else [])
    data_in = d.buffer(in_len) if in_len else None
    status = d.buffer(1)
    d.mem.write(status[0], b"\xee")
    head = d.add_chain(0, readable, ([data_in] if data_in else []) + [status])
    d.kick(0)
    used = d.used(0)
    assert [u[0] for u in used] == [head]
    d.reclaim(0, head)
    got = d.mem.read(data_in[0], in_len) if data_in else b""
    return d.mem.read(status[0], 1)[0], used[0][1], got


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "disk.img"
    p.write_bytes(bytes(range(256)) * (64 * SECTOR // 256))  # 64 sectors
    return p


def test_config_space_capacity(mem, image):
    t, dev, d, _ = start(mem, image)
    cap = t.read(spec.VIRTIO_MMIO_CONFIG, 4) | t.read(spec.VIRTIO_MMIO_CONFIG + 4, 4) << 32
    assert cap == 64
    assert t.read(spec.VIRTIO_MMIO_CONFIG, 1) == 64  # byte access to config space works
    t.close()


def test_read_write_flush_get_id(mem, image):
    t, dev, d, errors = start(mem, image)
    status, used_len, got = request(d, spec.VIRTIO_BLK_T_IN, 2, in_len=2 * SECTOR)
    assert status == spec.VIRTIO_BLK_S_OK and used_len == 2 * SECTOR + 1
    assert got == image.read_bytes()[2 * SECTOR:4 * SECTOR]
    payload = os.urandom(3 * SECTOR)
    status, used_len, _ = request(d, spec.VIRTIO_BLK_T_OUT, 10, out=payload)
    assert status == spec.VIRTIO_BLK_S_OK and used_len == 1
    assert image.read_bytes()[10 * SECTOR:13 * SECTOR] == payload
    status, _, _ = request(d, spec.VIRTIO_BLK_T_FLUSH, 0)
    assert status == spec.VIRTIO_BLK_S_OK and dev.flushes == 1
    status, _, ident = request(d, spec.VIRTIO_BLK_T_GET_ID, 0, in_len=20)
    assert status == spec.VIRTIO_BLK_S_OK and ident.rstrip(b"\0") == b"disk.img"
    assert errors == []
    t.close()


def test_bad_requests_get_an_error_status(mem, image):
    t, dev, d, errors = start(mem, image)
    assert request(d, spec.VIRTIO_BLK_T_IN, 63, in_len=2 * SECTOR)[0] == spec.VIRTIO_BLK_S_IOERR  # past end
    assert request(d, spec.VIRTIO_BLK_T_IN, 1 << 60, in_len=SECTOR)[0] == spec.VIRTIO_BLK_S_IOERR
    assert request(d, spec.VIRTIO_BLK_T_OUT, 0, out=b"x" * 100)[0] == spec.VIRTIO_BLK_S_IOERR  # not sectors
    assert request(d, 77, 0)[0] == spec.VIRTIO_BLK_S_UNSUPP
    assert errors == [] and t.driver_ok
    t.close()


def test_read_only_disk_refuses_writes(mem, image):
    before = image.read_bytes()
    t, dev, d, _ = start(mem, image, ro=True)
    d.w(spec.VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0)
    assert d.r(spec.VIRTIO_MMIO_DEVICE_FEATURES) >> spec.VIRTIO_BLK_F_RO & 1
    assert request(d, spec.VIRTIO_BLK_T_OUT, 0, out=bytes(SECTOR))[0] == spec.VIRTIO_BLK_S_IOERR
    assert request(d, spec.VIRTIO_BLK_T_IN, 0, in_len=SECTOR)[0] == spec.VIRTIO_BLK_S_OK
    assert image.read_bytes() == before
    t.close()


def test_malformed_request_is_a_driver_error(mem, image):
    t, dev, d, errors = start(mem, image)
    head = d.add_chain(0, [d.buffer(8)], [d.buffer(1)])  # header cut short
    d.kick(0)
    assert t.read(spec.VIRTIO_MMIO_STATUS, 4) & spec.VIRTIO_CONFIG_S_NEEDS_RESET
    assert "header" in errors[0] and head == 0
    t.close()


def test_disk_must_be_a_regular_file(tmp_path):
    with pytest.raises(ConfigError, match="regular file"):
        VirtioBlock("/dev/null")
    with pytest.raises(ConfigError, match="No such file"):
        VirtioBlock(str(tmp_path / "missing.img"))
