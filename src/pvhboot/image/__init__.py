"""Kernel file -> frozen facts.  :func:`load_kernel` tells an ELF vmlinux from a bzImage by magic.

The file is mapped read-only (never read whole into Python objects): a 53 MB vmlinux is described
in milliseconds, and the boot layer copies its segments straight from the mapping.  A bzImage's
payload is decompressed (that is the one unavoidable full pass) and described as its ELF vmlinux.
"""
from __future__ import annotations

import dataclasses
import mmap
import os

from ..abi.xen_notes import XEN_ELFNOTE
from ..errors import ImageError
from ..files import KERNEL_LIMIT, open_regular
from .bzimage import STARTUP_64_OFFSET, is_bzimage, linux32_entry, linux64_entry, parse_bzimage
from .elf import ELF_MAGIC, parse_elf, physical_entry
from .model import BzImage, ElfImage, Entries, KernelImage, LoadSegment, Protocol, RelocWindow, XenNote

__all__ = [
    "load_kernel", "describe_kernel", "map_file", "file_identity", "entries_of", "parse_elf", "parse_bzimage",
    "STARTUP_64_OFFSET",
    "KernelImage", "ElfImage", "BzImage", "Entries", "LoadSegment", "XenNote", "Protocol", "RelocWindow",
]


def map_file(path: str | os.PathLike) -> mmap.mmap:
    """Map a file read-only.  ImageError naming the file when it cannot be (missing, empty, a directory)."""
    return _map_file(path)[0]


def _map_file(path) -> tuple[mmap.mmap, tuple[int, int, int, int]]:
    # A regular file of at most KERNEL_LIMIT bytes, opened without blocking (a fifo, /dev/zero, a
    # directory are refused by pvhboot.files before anything is read).
    fd = open_regular(path, "kernel", KERNEL_LIMIT, error=ImageError)
    try:
        st = os.fstat(fd)
        if st.st_size == 0:
            raise ImageError(f"{os.fspath(path)}: file is empty, not a kernel")
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ), file_identity(st)
    except OSError as e:
        raise ImageError(f"cannot read kernel {os.fspath(path)}: {e.strerror or e}") from None
    finally:
        os.close(fd)


def file_identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """(device, inode, size, mtime_ns): what tells whether a path still names the file that was read."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _note_value(elf: ElfImage | None, note_type: int) -> int | None:
    note = elf.note(note_type) if elf else None
    return note.value if note is not None and isinstance(note.value, int) else None


def entries_of(elf: ElfImage | None, bz: BzImage | None) -> Entries:
    """Entry points by protocol.

    pvh: the PHYS32_ENTRY note; xen_pv: the ENTRY note (virtual, Xen only); linux32: a bzImage's
    code32_start (None for a vmlinux); linux64: a bzImage's code32_start + 0x200 when XLF_KERNEL_64
    is set, or a 64-bit vmlinux's e_entry as a physical address (a 32-bit vmlinux has no 64-bit
    entry).
    """
    if bz is not None:
        linux32, linux64 = linux32_entry(bz), linux64_entry(bz)
    else:
        linux32, linux64 = None, physical_entry(elf) if elf and elf.elf_class == 64 else None
    return Entries(
        pvh=_note_value(elf, XEN_ELFNOTE.PHYS32_ENTRY),
        linux32=linux32,
        linux64=linux64,
        xen_pv=_note_value(elf, XEN_ELFNOTE.ENTRY),
    )


def load_kernel(path: str | os.PathLike, *, decompress: bool = True) -> KernelImage:
    """Describe the kernel at ``path`` (ELF vmlinux or bzImage).  ImageError naming the file otherwise."""
    data, ident = _map_file(path)
    image = describe_kernel(data, os.fspath(path), decompress=decompress)
    if image.format == "elf":
        # Lets the loader map the segments from the file itself instead of copying them
        # (GuestMemory.load_file), once it has checked the path still names this very file.
        image = dataclasses.replace(image, file_id=ident)
    return image


def describe_kernel(data, name: str = "<kernel>", *, decompress: bool = True) -> KernelImage:
    """Describe a kernel held in ``data`` (bytes or a read-only mmap); errors are prefixed with ``name``."""
    try:
        if data[:4] == ELF_MAGIC:
            elf = parse_elf(data)
            return KernelImage(path=name, format="elf", entries=entries_of(elf, None), elf=elf)
        if is_bzimage(data):
            bz = parse_bzimage(data, decompress=decompress)
            return KernelImage(path=name, format="bzimage", entries=entries_of(bz.payload, bz),
                               elf=bz.payload, bzimage=bz)
    except ImageError as e:
        raise type(e)(f"{name}: {e}") from None
    seen = bytes(data[:4]).hex(" ")
    raise ImageError(f"{name}: neither an ELF vmlinux (no \\x7fELF magic; first bytes {seen}) "
                     f"nor a bzImage (no 'HdrS' at 0x202)")
