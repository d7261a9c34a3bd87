"""Read an ELF vmlinux (32- or 64-bit) with pyelftools: load segments, entry, Xen notes, build-id.

References: the System V gABI (program headers, notes), xen/include/public/elfnote.h (the "Xen"
notes, decoded by :mod:`pvhboot.abi.xen_notes`), and init/version.c (``linux_banner``, the
"Linux version ..." string in .rodata).

Cheap by design (the builder loads a 53 MB vmlinux in milliseconds): only the ELF header, program
headers, section headers and the notes are read; the symbol table and the bulk of the file are not
touched.  ``data`` may be a read-only mmap, which pyelftools reads as a stream.
"""
from __future__ import annotations

import io
import mmap
import struct

# pyelftools' structure definitions and note iterator, not elftools.elf.elffile: ELFFile imports the
# DWARF, EHABI, dynamic-section and relocation readers at module level (~9 ms of the builder's start-up,
# bench 3) and pvhboot reads only the headers and the notes here.  image/symbols.py uses ELFFile.
from elftools.common.exceptions import ELFError
from elftools.common.utils import parse_cstring_from_stream, struct_parse
from elftools.construct.core import ConstructError
from elftools.elf.notes import iter_notes
from elftools.elf.structs import ELFStructs

from ..abi.xen_notes import XEN_NOTE_OWNER, decode_xen_note, xen_note_name
from ..errors import ImageError
from .model import ElfImage, LoadSegment, XenNote

ELF_MAGIC = b"\x7fELF"
# elf.h: PF_X 1, PF_W 2, PF_R 4 (p_flags).
PF_W = 0x2
# include/uapi/linux/elf.h / binutils: NT_GNU_BUILD_ID = 3 in a "GNU" note.
NT_GNU_BUILD_ID = 3
# init/version.c: linux_banner = "Linux version " UTS_RELEASE " (" ... ")\n"
LINUX_BANNER_PREFIX = b"Linux version "
_BANNER_MAX = 512

# What pyelftools (and construct below it) raise on malformed input.
_PARSE_ERRORS = (ELFError, ConstructError, struct.error, ValueError, IndexError, KeyError, OverflowError,
                 UnicodeDecodeError, EOFError, TypeError, AttributeError, AssertionError)


class _BufferStream(io.RawIOBase):
    """A read-only seekable stream over a buffer, without copying it (BytesIO copies a bytearray)."""

    def __init__(self, buf) -> None:
        self._mv = memoryview(buf).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._mv)}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        end = len(self._mv) if n is None or n < 0 else min(len(self._mv), self._pos + n)
        chunk = bytes(self._mv[self._pos:end]) if end > self._pos else b""
        self._pos = max(self._pos, end)
        return chunk


def _stream(data):
    if isinstance(data, mmap.mmap):
        return data  # mmap has read/seek/tell; pyelftools only needs those
    if isinstance(data, bytes):
        return io.BytesIO(data)  # shares the bytes object's buffer
    return _BufferStream(data)


def parse_elf(data: bytes | bytearray | memoryview | mmap.mmap) -> ElfImage:
    """Parse an ELF vmlinux held in ``data``.  ImageError on anything malformed."""
    size = len(data)
    if size < 4 or bytes(data[:4]) != ELF_MAGIC:
        raise ImageError(f"not an ELF file (starts with {bytes(data[:4]).hex(' ') or 'nothing'})")
    # gABI e_ident[EI_CLASS]: ELFCLASS32 1 (52-byte header), ELFCLASS64 2 (64-byte header).
    ei_class = data[4] if size > 4 else 0
    need = {1: 52, 2: 64}.get(ei_class)
    if need is None:
        raise ImageError(f"ELF class byte EI_CLASS is {ei_class}, expected 1 (32-bit) or 2 (64-bit)")
    if size < need:
        raise ImageError(f"truncated ELF header: file has {size} bytes, the {32 * ei_class}-bit header needs {need}")
    try:
        return _parse(data, size)
    except ImageError:
        raise
    except _PARSE_ERRORS as e:
        raise ImageError(f"malformed ELF: {type(e).__name__}: {e}") from None


# gABI: SHN_XINDEX in e_shstrndx means the index is in section 0's sh_link.
_SHN_XINDEX = 0xFFFF


class _ElfHeaders:
    """What pvhboot reads of an ELF file, with pyelftools' structures (the subset of its ``ELFFile``
    that :func:`elftools.elf.notes.iter_notes` needs: ``stream``, ``structs``, ``elfclass``,
    ``little_endian``, ``header``), and the same checks ELFFile makes on e_ident and entry sizes."""

    def __init__(self, stream) -> None:
        self.stream = stream
        stream.seek(0)
        ident = stream.read(6)
        if ident[:4] != ELF_MAGIC:
            raise ELFError("Magic number does not match")
        self.elfclass = {1: 32, 2: 64}.get(ident[4])
        if self.elfclass is None:
            raise ELFError(f"Invalid EI_CLASS {ident[4:5]!r}")
        # gABI e_ident[EI_DATA]: ELFDATA2LSB 1, ELFDATA2MSB 2.
        if ident[5] not in (1, 2):
            raise ELFError(f"Invalid EI_DATA {ident[5:6]!r}")
        self.little_endian = ident[5] == 1
        self.structs = ELFStructs(little_endian=self.little_endian, elfclass=self.elfclass)
        self.structs.create_basic_structs()
        self.header = struct_parse(self.structs.Elf_Ehdr, stream, stream_pos=0)
        self.structs.create_advanced_structs(self.header["e_type"], self.header["e_machine"],
                                             self.header["e_ident"]["EI_OSABI"])

    def segment_header(self, n: int):
        return struct_parse(self.structs.Elf_Phdr, self.stream,
                            stream_pos=self.header["e_phoff"] + n * self.header["e_phentsize"])

    def section_header(self, n: int):
        shentsize = self.header["e_shentsize"]
        if shentsize < self.structs.Elf_Shdr.sizeof():
            raise ELFError(f"Too small e_shentsize: {shentsize}")
        return struct_parse(self.structs.Elf_Shdr, self.stream, stream_pos=self.header["e_shoff"] + n * shentsize)

    def iter_section_headers(self):
        """(name, header) for each of the e_shnum sections (names from the section name string table)."""
        shstrndx = self.header["e_shstrndx"]
        if shstrndx == _SHN_XINDEX:
            shstrndx = self.section_header(0)["sh_link"]
        strtab = self.section_header(shstrndx)["sh_offset"]
        for i in range(self.header["e_shnum"]):
            sh = self.section_header(i)
            raw = parse_cstring_from_stream(self.stream, strtab + sh["sh_name"])
            yield (raw.decode("utf-8", errors="replace") if raw else ""), sh


def _parse(data, size: int) -> ElfImage:
    elf = _ElfHeaders(_stream(data))
    hdr = elf.header
    phoff, phnum, phentsize = hdr["e_phoff"], hdr["e_phnum"], hdr["e_phentsize"]
    if phnum and (phentsize < elf.structs.Elf_Phdr.sizeof() or phoff + phnum * phentsize > size):
        raise ImageError(f"program header table ({phnum} x {phentsize} bytes at {phoff:#x}) "
                         f"runs past the end of the file ({size:#x})")
    endian = "<" if elf.little_endian else ">"

    segments: list[LoadSegment] = []
    xen_notes: list[XenNote] = []
    build_id: str | None = None
    for i in range(phnum):
        ph = elf.segment_header(i)
        ptype = ph["p_type"]
        if ptype == "PT_LOAD":
            seg = LoadSegment(paddr=ph["p_paddr"], vaddr=ph["p_vaddr"], offset=ph["p_offset"],
                              filesz=ph["p_filesz"], memsz=ph["p_memsz"], flags=ph["p_flags"],
                              align=ph["p_align"])
            if seg.offset + seg.filesz > size:
                raise ImageError(f"PT_LOAD segment {i} (file bytes {seg.offset:#x}+{seg.filesz:#x}) "
                                 f"runs past the end of the file ({size:#x})")
            if seg.filesz > seg.memsz:
                raise ImageError(f"PT_LOAD segment {i} has p_filesz {seg.filesz:#x} > p_memsz {seg.memsz:#x}")
            segments.append(seg)
        elif ptype == "PT_NOTE":
            off, filesz = ph["p_offset"], ph["p_filesz"]
            if off + filesz > size:
                raise ImageError(f"PT_NOTE segment {i} (file bytes {off:#x}+{filesz:#x}) "
                                 f"runs past the end of the file ({size:#x})")
            for note in iter_notes(elf, off, filesz):
                # Raw type and descriptor straight from the file: pyelftools maps note types to
                # GNU names whatever the owner, and decodes some descriptors.
                n_off = note["n_offset"]
                namesz, descsz, ntype = struct.unpack_from(endian + "III", data, n_off)
                desc_off = n_off + 12 + ((namesz + 3) & ~3)
                if desc_off + descsz > off + filesz:
                    raise ImageError(f"ELF note at {n_off:#x} (descsz {descsz}) "
                                     "runs past the end of its PT_NOTE segment")
                desc = bytes(data[desc_off:desc_off + descsz])
                owner = note["n_name"]
                if owner == XEN_NOTE_OWNER:
                    xen_notes.append(XenNote(type=ntype, name=xen_note_name(ntype),
                                             value=decode_xen_note(ntype, desc, elf.little_endian),
                                             desc=desc))
                elif owner == "GNU" and ntype == NT_GNU_BUILD_ID and build_id is None:
                    build_id = desc.hex()

    symbols_available = False
    rodata = None
    if hdr["e_shoff"] and hdr["e_shnum"] and hdr["e_shoff"] + hdr["e_shnum"] * hdr["e_shentsize"] <= size:
        for name, sec in elf.iter_section_headers():
            if name == ".symtab" and sec["sh_size"]:
                symbols_available = True
            elif name == ".rodata" and sec["sh_type"] == "SHT_PROGBITS":
                rodata = (sec["sh_offset"], sec["sh_offset"] + sec["sh_size"])

    return ElfImage(
        data=data,
        elf_class=elf.elfclass,
        machine=str(hdr["e_machine"]),
        e_entry=hdr["e_entry"],
        segments=tuple(segments),
        xen_notes=tuple(xen_notes),
        build_id=build_id,
        linux_version=find_linux_version(data, [rodata] if rodata else
                                         [(s.offset, s.offset + s.filesz) for s in segments if not s.flags & PF_W]),
        symbols_available=symbols_available,
    )


def find_linux_version(data, ranges) -> str | None:
    """The first "Linux version <digit>..." string (linux_banner) within the given file ranges."""
    size = len(data)
    for start, end in ranges:
        start, end = max(0, start), min(size, end)
        pos = start
        while pos < end:
            pos = data.find(LINUX_BANNER_PREFIX, pos, end)
            if pos < 0:
                break
            text = bytes(data[pos:min(end, pos + _BANNER_MAX)])
            cut = len(text)
            for stop in (b"\n", b"\0"):
                i = text.find(stop)
                if 0 <= i < cut:
                    cut = i
            text = text[:cut]
            if len(text) > len(LINUX_BANNER_PREFIX) and text[len(LINUX_BANNER_PREFIX)] in b"0123456789":
                return text.decode("ascii", "replace")
            pos += 1
    return None


def physical_entry(elf: ElfImage) -> int | None:
    """e_entry as a physical address.

    An x86-64 (and i386) vmlinux's e_entry is already physical (startup_64 at 0x1000000, inside a
    segment's paddr range).  When it is instead a virtual address (e.g. >= 0xffffffff80000000),
    translate it through the PT_LOAD segment that contains it: paddr + (e_entry - vaddr).
    """
    e = elf.e_entry
    for seg in elf.segments:
        if seg.paddr <= e < seg.paddr + max(seg.memsz, 1):
            return e
    for seg in elf.segments:
        if seg.vaddr <= e < seg.vaddr + max(seg.memsz, 1):
            return seg.paddr + (e - seg.vaddr)
    return None
