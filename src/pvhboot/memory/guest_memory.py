"""Guest-physical RAM backed by anonymous host mappings, one per contiguous RAM range.

Pure Python (mmap + ctypes): no KVM here.  The kvm layer registers each region's host address as a
memory slot; the boot writers only call :meth:`GuestMemory.write` / :meth:`read` / :meth:`view`.
"""
from __future__ import annotations

import ctypes
import mmap
import os
from dataclasses import dataclass

from ..errors import LayoutError

# mmap(2) flags and protections (asm-generic/mman-common.h, mman.h) for the file mappings of
# :meth:`GuestMemory.load_file`, which Python's mmap module cannot place at a fixed address.
_PROT_READ, _PROT_WRITE = 0x1, 0x2
_MAP_PRIVATE, _MAP_FIXED = 0x02, 0x10
_libc_mmap = None

# madvise(MADV_HUGEPAGE): ask for transparent huge pages on the guest RAM, as Firecracker and QEMU do;
# it is advice only, so a kernel without THP simply ignores it.
_MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", 14)


# MAP_NORESERVE (asm-generic/mman-common.h; Python's mmap module names it only from 3.12): no swap
# or commit charge is reserved up front, so a guest may be given more RAM than the host has free, as
# QEMU allows `-m 64G` on a smaller host: pages are backed when the guest first touches them.  With
# vm.overcommit_memory=2 the kernel ignores it and refuses what it cannot commit (mmap(2)).
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)


def map_guest_ram(gpa: int, size: int, fd: int = -1) -> mmap.mmap:
    """The host mapping behind one RAM range: anonymous, private, lazily backed (MAP_NORESERVE),
    transparent huge pages advised; with ``fd`` (a memfd of ``size`` bytes) the memfd mapped shared
    instead, so another process can map the same pages.  LayoutError (one line for the user) when the
    host refuses (address space or overcommit limits).  The one place that creates guest RAM mappings."""
    try:
        if fd >= 0:
            m = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _MAP_NORESERVE)
        else:
            m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE)
    except OSError as e:
        raise LayoutError(f"the host cannot map {size >> 20} MiB of guest RAM at {gpa:#x} "
                          f"({e.strerror or e}); give the guest less --memory") from None
    try:
        m.madvise(_MADV_HUGEPAGE)
    except (OSError, AttributeError):
        pass
    return m


@dataclass
class MemoryRegion:
    """One contiguous guest-physical RAM range and the host mapping behind it."""

    guest_addr: int
    size: int
    mapping: mmap.mmap
    fd: int = -1  # the memfd behind a shared region (vhost-user back ends map it), else -1

    @property
    def end(self) -> int:
        return self.guest_addr + self.size

    @property
    def host_addr(self) -> int:
        """Host virtual address of the first byte (for KVM_SET_USER_MEMORY_REGION)."""
        return ctypes.addressof(ctypes.c_char.from_buffer(self.mapping))


class GuestMemory:
    """A set of non-overlapping RAM regions.  Use as a context manager, or call :meth:`close`."""

    def __init__(self, ranges: list[tuple[int, int]], shared: bool = False):
        """``shared``: back each range with a memfd mapped MAP_SHARED, so another process (a
        vhost-user back end such as virtiofsd) can map the same pages from the fd."""
        self.regions: list[MemoryRegion] = []
        self.shared = shared
        try:
            for gpa, size in sorted(ranges):
                if size <= 0 or gpa % mmap.PAGESIZE or size % mmap.PAGESIZE:
                    raise LayoutError(f"RAM range {gpa:#x}+{size:#x} is not page aligned")
                if self.regions and gpa < self.regions[-1].end:
                    raise LayoutError(f"RAM range {gpa:#x}+{size:#x} overlaps another")
                fd = -1
                if shared:
                    try:
                        fd = os.memfd_create(f"pvhboot-ram-{gpa:#x}", os.MFD_CLOEXEC)
                        os.ftruncate(fd, size)
                    except OSError as e:
                        if fd >= 0:
                            os.close(fd)
                        raise LayoutError(f"cannot create {size >> 20} MiB of shared guest RAM at {gpa:#x} "
                                          f"({e.strerror or e})") from None
                try:
                    mapping = map_guest_ram(gpa, size, fd)
                except BaseException:
                    if fd >= 0:
                        os.close(fd)
                    raise
                self.regions.append(MemoryRegion(gpa, size, mapping, fd))
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
            if r.fd >= 0:
                os.close(r.fd)
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

    def load_file(self, gpa: int, fd: int, offset: int, length: int) -> int:
        """Place ``length`` bytes of the file ``fd`` from ``offset`` at ``gpa``, like a copy, without
        copying the pages that can be mapped instead.  Returns the number of bytes mapped (0: copied).

        Whole pages of the range are mapped MAP_PRIVATE|MAP_FIXED over the RAM region when ``gpa``
        and ``offset`` are congruent modulo the page size (a vmlinux's PT_LOAD segments are: the
        gABI asks p_vaddr = p_offset mod p_align): the guest reads them from the page cache and a
        guest write copies the page (copy-on-write), never touching the file.  The partial first
        and last pages are copied (read), so the rest of those pages keeps its contents: the
        zero bss after a segment's last file byte stays zero.  Otherwise everything is copied.
        A later change to the file by another process may show through pages the guest has not
        written (MAP_PRIVATE semantics); the builder maps a kernel only right after describing it.
        """
        r, off = self._locate(gpa, length)
        page = mmap.PAGESIZE
        head = (-gpa) % page  # bytes before the first page boundary inside the range
        mapped = 0
        # Pages past the end of the file would raise SIGBUS when touched: map only a file that is long enough.
        # Shared RAM is copied: a private file mapping over it would hide those pages from the other
        # process that maps the memfd (a vhost-user back end would read zeros there).
        if (r.fd < 0 and (gpa - offset) % page == 0 and length - head >= page
                and os.fstat(fd).st_size >= offset + length):
            mapped = (length - head) // page * page
            if not _map_fixed(r.host_addr + off + head, mapped, fd, offset + head):
                mapped = 0
        copies = [(0, head), (head + mapped, length - head - mapped)] if mapped else [(0, length)]
        for start, n in copies:
            if n > 0:
                view = memoryview(r.mapping)[off + start: off + start + n]
                try:
                    got = 0
                    while got < n:
                        k = os.preadv(fd, [view[got:]], offset + start + got)
                        if k <= 0:
                            raise LayoutError(f"file ends before byte {offset + start + got:#x} "
                                              f"(loading {length:#x} bytes from {offset:#x})")
                        got += k
                finally:
                    view.release()
        return mapped

    def write_struct(self, gpa: int, struct: ctypes.Structure) -> None:
        self.write(gpa, bytes(struct))

    def read_cstring(self, gpa: int, limit: int = 4096) -> bytes:
        r, off = self._locate(gpa, 1)
        end = r.mapping.find(b"\0", off, min(off + limit, r.size))
        if end < 0:
            raise LayoutError(f"no NUL within {limit} bytes of {gpa:#x}")
        return r.mapping[off:end]


def _map_fixed(addr: int, length: int, fd: int, offset: int) -> bool:
    """mmap(addr, length, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_FIXED, fd, offset) over our own
    anonymous mapping (replacing its pages), through libc since Python's mmap takes no address.
    False when the kernel refuses (e.g. a file system without mmap): the range is then anonymous
    (zero) memory again and the caller copies."""
    global _libc_mmap
    if _libc_mmap is None:
        fn = ctypes.CDLL(None, use_errno=True).mmap
        fn.restype = ctypes.c_void_p
        fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
        _libc_mmap = fn
    prot = _PROT_READ | _PROT_WRITE
    if _libc_mmap(addr, length, prot, _MAP_PRIVATE | _MAP_FIXED, fd, offset) == addr:
        return True
    # A failed MAP_FIXED may already have unmapped the old pages (mmap(2)): put anonymous memory back.
    err = ctypes.get_errno()
    if _libc_mmap(addr, length, prot, _MAP_PRIVATE | _MAP_FIXED | mmap.MAP_ANONYMOUS, -1, 0) != addr:
        raise LayoutError(f"guest RAM at host {addr:#x}+{length:#x} lost after a failed file mapping "
                          f"({os.strerror(err)})")
    return False
