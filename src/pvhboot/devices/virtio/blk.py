"""virtio-blk (virtio 1.2 §5.2) over a raw image file.

A request is a chain: the 16-byte struct virtio_blk_outhdr (device-readable), the data (readable for
OUT, writable for IN), and one status byte, the last device-writable byte (§5.2.6).  Data moves with
preadv/pwritev straight between the file and guest RAM views (no copy through Python bytes).
FLUSH fsyncs the file before the status is written (§5.2.6.1: "the device MUST ensure that all
previous writes are committed to stable storage" ... before completing), so a guest's `sync`
reaches the host's disk.  A read-only disk offers VIRTIO_BLK_F_RO and answers OUT with IOERR.

A chain without room for the header or the status byte is a driver error (the transport then sets
NEEDS_RESET); a request that is well formed but wrong (a sector past the end, a data length that is
not whole sectors) gets VIRTIO_BLK_S_IOERR, an unknown type VIRTIO_BLK_S_UNSUPP.
"""
from __future__ import annotations

import os
import stat

from ...errors import ConfigError
from . import spec
from .device import VirtioDevice
from .queue import VirtqueueError, gather, scatter, views

QUEUE_SIZE = 256
SEG_MAX = QUEUE_SIZE - 2  # every descriptor but the header's and the status byte's


def _blk_config(capacity_sectors: int) -> bytes:
    # struct virtio_blk_config: le64 capacity; le32 size_max; le32 seg_max; geometry (4); le32 blk_size
    return (capacity_sectors.to_bytes(8, "little") + (0).to_bytes(4, "little") + SEG_MAX.to_bytes(4, "little")
            + bytes(4) + spec.VIRTIO_BLK_SECTOR_SIZE.to_bytes(4, "little"))


class VirtioBlock(VirtioDevice):
    device_id = spec.VIRTIO_ID_BLOCK
    queue_sizes = (QUEUE_SIZE,)

    def __init__(self, path: str, read_only: bool = False, serial: str | None = None) -> None:
        self.path = path
        self.read_only = read_only
        self.name = f"virtio-blk {path}"
        try:
            fd = os.open(path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
        except OSError as e:
            raise ConfigError(f"disk {path}: {e.strerror}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise ConfigError(f"disk {path}: not a regular file (a raw image file is needed)")
        self.fd = fd
        self.size = st.st_size
        self.capacity = st.st_size // spec.VIRTIO_BLK_SECTOR_SIZE
        self.features = ((1 << spec.VIRTIO_BLK_F_SEG_MAX) | (1 << spec.VIRTIO_BLK_F_BLK_SIZE)
                         | (1 << spec.VIRTIO_BLK_F_FLUSH) | ((1 << spec.VIRTIO_BLK_F_RO) if read_only else 0))
        self.serial = (serial or os.path.basename(path)).encode()[:spec.VIRTIO_BLK_ID_BYTES]
        self._config = _blk_config(self.capacity)
        self.flushes = 0  # tests read it

    def config(self) -> bytes:
        return self._config

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def process(self, mem, index: int, queue) -> bool:
        pushed = False
        for chain in queue.drain(mem):
            written = self._request(mem, chain)
            queue.push_used(mem, chain.head, written)
            pushed = True
        return pushed

    def _request(self, mem, chain) -> int:
        """Serve one request; returns the bytes written into the chain (data + status)."""
        hdr_len = spec.VIRTIO_BLK_OUTHDR.size
        if chain.readable_bytes < hdr_len:
            raise VirtqueueError(f"request {chain.head}: {chain.readable_bytes} readable bytes, "
                                 f"less than the {hdr_len}-byte header")
        if chain.writable_bytes < 1:
            raise VirtqueueError(f"request {chain.head}: no device-writable status byte")
        rtype, _ioprio, sector = spec.VIRTIO_BLK_OUTHDR.unpack(gather(mem, chain.readable, 0, hdr_len))
        status_seg = chain.writable[-1]
        status_addr = status_seg.addr + status_seg.length - 1
        data_in = chain.writable_bytes - 1  # room for IN data before the status byte
        data_out = chain.readable_bytes - hdr_len
        written = 0
        if rtype == spec.VIRTIO_BLK_T_IN:
            status, written = self._read(mem, chain, sector, data_in)
        elif rtype == spec.VIRTIO_BLK_T_OUT:
            status = self._write(mem, chain, sector, data_out)
        elif rtype == spec.VIRTIO_BLK_T_FLUSH:
            status = self._flush()
        elif rtype == spec.VIRTIO_BLK_T_GET_ID:
            ident = self.serial.ljust(spec.VIRTIO_BLK_ID_BYTES, b"\0")[:data_in]
            written = scatter(mem, chain.writable, ident)
            status = spec.VIRTIO_BLK_S_OK
        else:
            status = spec.VIRTIO_BLK_S_UNSUPP
        mem.write(status_addr, bytes([status]))
        return written + 1

    def _range_ok(self, sector: int, length: int) -> bool:
        unit = spec.VIRTIO_BLK_SECTOR_SIZE
        return length % unit == 0 and sector <= self.capacity and length // unit <= self.capacity - sector

    def _read(self, mem, chain, sector: int, length: int) -> tuple[int, int]:
        if not self._range_ok(sector, length):
            return spec.VIRTIO_BLK_S_IOERR, 0
        bufs = views(mem, chain.writable, 0, length)
        try:
            done = _io_all(os.preadv, self.fd, bufs, sector * spec.VIRTIO_BLK_SECTOR_SIZE)
        except OSError:
            return spec.VIRTIO_BLK_S_IOERR, 0
        finally:
            for b in bufs:
                b.release()
        return (spec.VIRTIO_BLK_S_OK if done == length else spec.VIRTIO_BLK_S_IOERR), done

    def _write(self, mem, chain, sector: int, length: int) -> int:
        if self.read_only:
            return spec.VIRTIO_BLK_S_IOERR
        if not self._range_ok(sector, length):
            return spec.VIRTIO_BLK_S_IOERR
        bufs = views(mem, chain.readable, spec.VIRTIO_BLK_OUTHDR.size, length)
        try:
            done = _io_all(os.pwritev, self.fd, bufs, sector * spec.VIRTIO_BLK_SECTOR_SIZE)
        except OSError:
            return spec.VIRTIO_BLK_S_IOERR
        finally:
            for b in bufs:
                b.release()
        return spec.VIRTIO_BLK_S_OK if done == length else spec.VIRTIO_BLK_S_IOERR

    def _flush(self) -> int:
        if self.read_only:
            return spec.VIRTIO_BLK_S_OK  # nothing was written through this device
        try:
            os.fsync(self.fd)
        except OSError:
            return spec.VIRTIO_BLK_S_IOERR
        self.flushes += 1
        return spec.VIRTIO_BLK_S_OK


def _io_all(fn, fd: int, bufs: list[memoryview], offset: int) -> int:
    """preadv/pwritev until every buffer is done or the file ends (short transfers are legal)."""
    total = sum(len(b) for b in bufs)
    done = 0
    while done < total:
        rest, skip = [], done
        for b in bufs:
            if skip >= len(b):
                skip -= len(b)
                continue
            rest.append(b[skip:])
            skip = 0
        n = fn(fd, rest, offset + done)
        if n <= 0:
            break
        done += n
    return done

