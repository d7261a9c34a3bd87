"""What pvhboot knows about a kernel file, as frozen facts.  Built by :func:`pvhboot.image.load_kernel`.

A bzImage is described by its setup header *and* by its payload decompressed to the ELF vmlinux,
so a distro kernel that ships only a bzImage can still be booted the PVH way.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from ..abi.bootparam import setup_header
from ..abi.xen_notes import PHYS32_RELOC_FIELDS, XEN_ELFNOTE
from ..errors import BootError


class Protocol(enum.StrEnum):
    """The entry protocols pvhboot knows, by the name the CLI, the JSON reports and the probe use.

    The one list of protocol names: image (entries), boot (plan, CPU state) and every command's
    ``--protocol`` choices derive from it.  A StrEnum: a member compares equal to its name.
    """

    PVH = "pvh"  # Xen PVH: XEN_ELFNOTE_PHYS32_ENTRY, 32-bit, EBX = hvm_start_info
    LINUX32 = "linux32"  # boot.rst "32-bit Boot Protocol": code32_start, ESI = boot_params
    LINUX64 = "linux64"  # boot.rst "64-bit Boot Protocol": identity map, RSI = boot_params
    XEN_PV = "xen_pv"  # XEN_ELFNOTE_ENTRY: described by inspect, needs the Xen hypervisor to boot

    @classmethod
    def bootable(cls) -> tuple[Protocol, ...]:
        """What pvhboot can start on KVM (everything but Xen PV)."""
        return (cls.PVH, cls.LINUX32, cls.LINUX64)

    @classmethod
    def choices(cls, *, auto: bool = True) -> tuple[str, ...]:
        """``--protocol`` choices: "auto" (when wanted) and the bootable protocols' names."""
        return (("auto",) if auto else ()) + tuple(p.value for p in cls.bootable())


@dataclass(frozen=True)
class RelocWindow:
    """XEN_ELFNOTE_PHYS32_RELOC (elfnote.h): the PVH entry is position-independent and the image
    may be loaded at any ``align``-aligned address from ``min`` with its last byte at or below
    ``max``.  Absent fields take Xen's defaults (libelf: 2 MiB, 0, 4 GiB - 1)."""

    align: int = 0x200000
    min: int = 0
    max: int = 0xFFFFFFFF

    @classmethod
    def from_note(cls, value) -> RelocWindow | None:
        if not isinstance(value, tuple):
            return None  # a malformed descriptor (decoded as raw bytes)
        return cls(**dict(zip(PHYS32_RELOC_FIELDS, value)))

    def to_json(self) -> dict[str, int]:
        return {"align": self.align, "min": self.min, "max": self.max}


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
    desc: bytes = b""  # the descriptor as stored in the file (value is decoded from it)


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

    def note(self, note_type: int) -> XenNote | None:
        """The first Xen note of this type (XEN_ELFNOTE_* number), or None."""
        return next((n for n in self.xen_notes if n.type == note_type), None)

    @property
    def reloc_window(self) -> RelocWindow | None:
        """The PHYS32_RELOC window, or None when the kernel does not carry that note."""
        note = self.note(XEN_ELFNOTE.PHYS32_RELOC)
        return RelocWindow.from_note(note.value) if note is not None else None


@dataclass(frozen=True)
class BzImage:
    """A bzImage: its setup header (as a dict of setup_header fields) and where its parts are in the file."""

    data: bytes | memoryview
    header: dict[str, int]  # the fields of ``setup_header`` by name (inspect's report)
    setup_header: setup_header  # as the kernel declares it: bytes past 0x202 + data[0x201] are zero (boot.rst)
    boot_protocol: tuple[int, int]
    setup_size: int  # (setup_sects or 4, +1) * 512: file offset of the protected-mode kernel
    compression: str  # gzip, bzip2, lzma, xz, lz4, zstd
    payload: ElfImage | None = None  # the decompressed vmlinux (None only if not requested)
    payload_offset: int = 0  # file offset of the payload: setup_size + setup_header.payload_offset
    payload_length: int = 0  # its length, including the 4-byte decompressed-size trailer
    version_string: str | None = None  # the string setup_header.kernel_version points at


@dataclass(frozen=True)
class KernelImage:
    """The facts a loader needs, whatever the file was."""

    path: str
    format: str  # "elf" | "bzimage"
    entries: Entries
    elf: ElfImage | None  # the vmlinux itself, or a bzImage's decompressed payload
    bzimage: BzImage | None = None
    # (device, inode, size, mtime_ns) of the ELF file read (load_kernel of a vmlinux): lets the
    # loader map segments from the file itself once it has checked the path still names it.
    file_id: tuple[int, int, int, int] | None = None

    @property
    def xen_notes(self) -> tuple[XenNote, ...]:
        return self.elf.xen_notes if self.elf else ()

    @property
    def segments(self) -> tuple[LoadSegment, ...]:
        return self.elf.segments if self.elf else ()

    @property
    def linux_version(self) -> str | None:
        if self.elf and self.elf.linux_version:
            return self.elf.linux_version
        return self.bzimage.version_string if self.bzimage else None

    def require_entry(self, protocol: Protocol) -> int:
        """The entry address for ``protocol`` at the kernel's own load address, or BootError saying
        how to fix it.  A loader that moves the kernel moves the entry by the same offset."""
        try:
            protocol = Protocol(protocol)
        except ValueError:
            raise BootError(f"unknown boot protocol {protocol!r} (choose one of "
                            f"{', '.join(p.value for p in Protocol)})") from None
        entry = getattr(self.entries, protocol.value)
        if entry is not None:
            return entry
        what = "bzImage" if self.format == "bzimage" else "ELF vmlinux"
        if protocol is Protocol.PVH:
            hint = ("it has no XEN_ELFNOTE_PHYS32_ENTRY note, so it was built without CONFIG_PVH=y; "
                    "rebuild it with CONFIG_PVH=y or boot it with --protocol linux64")
        elif protocol is Protocol.LINUX32:
            hint = ("the 32-bit Linux boot protocol needs a bzImage (its setup header gives code32_start); "
                    "boot the bzImage instead, or use --protocol pvh or linux64")
        elif protocol is Protocol.LINUX64:
            if self.format == "bzimage":
                hint = ("its setup header does not set XLF_KERNEL_64 in xloadflags (a 32-bit kernel?); "
                        "use --protocol linux32 or pvh")
            elif self.elf and self.elf.elf_class == 32:
                hint = "it is a 32-bit kernel (ELF32): it has no 64-bit entry; use --protocol pvh"
            else:
                hint = (f"its ELF entry {self.elf.e_entry if self.elf else 0:#x} is not inside any PT_LOAD "
                        "segment, so it has no physical 64-bit entry; use --protocol pvh")
        else:
            hint = "it has no XEN_ELFNOTE_ENTRY note (and a Xen PV entry needs the Xen hypervisor anyway)"
        raise BootError(f"{what} {self.path} cannot boot with --protocol {protocol}: {hint}")
