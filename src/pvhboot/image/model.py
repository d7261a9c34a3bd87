"""What pvhboot knows about a kernel file, as frozen facts.  Built by :func:`pvhboot.image.load_kernel`.

A bzImage is described by its setup header *and* by its payload decompressed to the ELF vmlinux,
so a distro kernel that ships only a bzImage can still be booted the PVH way.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LoadSegment:
    """One ELF PT_LOAD program header."""

    paddr: int
    vaddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int = 0
    align: int = 0


@dataclass(frozen=True)
class XenNote:
    """One Xen ELF note (xen/include/public/elfnote.h): type number, XEN_ELFNOTE_* name, decoded value."""

    type: int
    name: str
    value: int | str | bytes | tuple[int, ...]


@dataclass(frozen=True)
class Entries:
    """Entry points by protocol (physical addresses), None where the kernel has none."""

    pvh: int | None = None  # XEN_ELFNOTE_PHYS32_ENTRY
    linux32: int | None = None  # bzImage: code32_start of the protected-mode kernel
    linux64: int | None = None  # bzImage: load address + 0x200; vmlinux: ELF e_entry (physical)
    xen_pv: int | None = None  # XEN_ELFNOTE_ENTRY (virtual, needs Xen)


@dataclass(frozen=True)
class ElfImage:
    """An ELF vmlinux.  ``data`` is the whole file (bytes or a read-only mmap)."""

    data: bytes | memoryview
    elf_class: int  # 32 or 64
    machine: str  # pyelftools e_machine, e.g. "EM_X86_64"
    e_entry: int
    segments: tuple[LoadSegment, ...]
    xen_notes: tuple[XenNote, ...]
    build_id: str | None = None
    linux_version: str | None = None
    symbols_available: bool = False


@dataclass(frozen=True)
class BzImage:
    """A bzImage: its setup header (as a dict of setup_header fields) and where its parts are in the file."""

    data: bytes | memoryview
    header: dict[str, int]
    boot_protocol: tuple[int, int]
    setup_size: int  # (setup_sects or 4, +1) * 512: file offset of the protected-mode kernel
    compression: str  # gzip, bzip2, lzma, xz, lz4, zstd
    payload: ElfImage | None = None  # the decompressed vmlinux (None only if not requested)


@dataclass(frozen=True)
class KernelImage:
    """The facts a loader needs, whatever the file was."""

    path: str
    format: str  # "elf" | "bzimage"
    entries: Entries
    elf: ElfImage | None  # the vmlinux itself, or a bzImage's decompressed payload
    bzimage: BzImage | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def xen_notes(self) -> tuple[XenNote, ...]:
        return self.elf.xen_notes if self.elf else ()

    @property
    def segments(self) -> tuple[LoadSegment, ...]:
        return self.elf.segments if self.elf else ()
