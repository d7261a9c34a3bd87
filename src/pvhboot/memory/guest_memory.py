"""Guest-physical RAM backed by anonymous host mappings, one per contiguous RAM range.

Pure Python (mmap + ctypes): no KVM here.  The kvm layer registers each region's host address as a
memory slot; the boot writers only call :meth:`GuestMemory.write` / :meth:`read` / :meth:`view`.
"""
from __future__ import annotations

import ctypes
import mmap
from dataclasses import dataclass

from ..errors import LayoutError

# madvise(MADV_HUGEPAGE): ask for transparent huge pages on the guest RAM, as Firecracker and QEMU do;
# it is advice only, so a kernel without THP simply ignores it.
_MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", 14)


@dataclass
class MemoryRegion:
    """One contiguous guest-physical RAM range and the host mapping behind it."""

    guest_addr: int
    size: int
    mapping: mmap.mmap

    @property
    def end(self) -> int:
        return self.guest_addr + self.size

    @property
    def host_addr(self) -> int:
        """Host virtual address of the first byte (for KVM_SET_USER_MEMORY_REGION)."""
        return ctypes.addressof(ctypes.c_char.from_buffer(self.mapping))


class GuestMemory:
    """A set of non-overlapping RAM regions.  Use as a context manager, or call :meth:`close`."""

    def __init__(self, ranges: list[tuple[int, int]]):
        self.regions: list[MemoryRegion] = []
        try:
            for gpa, size in sorted(ranges):
                if size <= 0 or gpa % mmap.PAGESIZE or size % mmap.PAGESIZE:
                    raise LayoutError(f"RAM range {gpa:#x}+{size:#x} is not page aligned")
                if self.regions and gpa < self.regions[-1].end:
                    raise LayoutError(f"RAM range {gpa:#x}+{size:#x} overlaps another")
                m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
                try:
                    m.madvise(_MADV_HUGEPAGE)
                except (OSError, AttributeError):
                    pass
                self.regions.append(MemoryRegion(gpa, size, m))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for r in self.regions:
            try:
                r.mapping.close()
            except BufferError:
                # A ctypes view still exports the buffer; it is released when collected.
                pass
        self.regions = []

    @property
    def size(self) -> int:
        return sum(r.size for r in self.regions)

    def _locate(self, gpa: int, length: int) -> tuple[MemoryRegion, int]:
        for r in self.regions:
            if r.guest_addr <= gpa and gpa + length <= r.end:
                return r, gpa - r.guest_addr
        raise LayoutError(f"guest range {gpa:#x}+{length:#x} is not inside guest RAM")

    def contains(self, gpa: int, length: int = 1) -> bool:
        try:
            self._locate(gpa, length)
        except LayoutError:
            return False
        return True

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        r, off = self._locate(gpa, len(data))
        r.mapping[off : off + len(data)] = data

    def read(self, gpa: int, length: int) -> bytes:
        r, off = self._locate(gpa, length)
        return r.mapping[off : off + length]

    def view(self, gpa: int, length: int) -> memoryview:
        """A writable view (zero copy), e.g. to decompress or copy a file straight into RAM."""
        r, off = self._locate(gpa, length)
        return memoryview(r.mapping)[off : off + length]

    def write_struct(self, gpa: int, struct: ctypes.Structure) -> None:
        self.write(gpa, bytes(struct))

    def read_cstring(self, gpa: int, limit: int = 4096) -> bytes:
        r, off = self._locate(gpa, 1)
        end = r.mapping.find(b"\0", off, min(off + limit, r.size))
        if end < 0:
            raise LayoutError(f"no NUL within {limit} bytes of {gpa:#x}")
        return r.mapping[off:end]
