"""Synthetic kernel files for the image/ tests: a small ELF "vmlinux" and bzImages around it.

Built from the public formats (System V gABI ELF, Documentation/arch/x86/boot.rst, the kernel's
size_append trailer), independently of pvhboot's parser: the setup header is filled through the one
ctypes declaration, pvhboot.abi.bootparam.setup_header.
"""
from __future__ import annotations

import bz2
import ctypes
import gzip
import lzma
import struct

from pvhboot.abi.bootparam import BOOT_FLAG_MAGIC, HDRS_MAGIC, SETUP_HEADER_OFFSET, setup_header

PT_LOAD, PT_NOTE = 1, 4
PF_X, PF_W, PF_R = 1, 2, 4
SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_NOTE, SHT_NOBITS = 1, 2, 3, 7, 8
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 1, 2, 4
STT_NOTYPE, STT_OBJECT, STT_FUNC = 0, 1, 2
EM_386, EM_X86_64 = 3, 62

BANNER = b"Linux version 6.9.0-synthetic (test@pvhboot) (gcc) #1 SMP\n"
DEFAULT_BUILD_ID = bytes(range(20))


def note(owner: str, ntype: int, desc: bytes) -> bytes:
    """One ELF note: namesz, descsz, type, name (NUL, padded to 4), desc (padded to 4)."""
    name = owner.encode() + b"\0"
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name), len(desc), ntype) + pad(name) + pad(desc)


def xen_notes_default() -> list[tuple[str, int, bytes]]:
    """Xen notes as Linux emits them: strings, 8-byte and 4-byte numerics, a 16-byte pair, RELOC."""
    return [
        ("Xen", 6, b"linux\0"),  # GUEST_OS
        ("Xen", 10, b"!writable_page_tables"),  # FEATURES: .ascii, no NUL (as Linux does)
        ("Xen", 3, struct.pack("<Q", 0xFFFFFFFF80000000)),  # VIRT_BASE, 8 bytes
        ("Xen", 1, struct.pack("<Q", 0xFFFFFFFF81000040)),  # ENTRY, 8 bytes
        ("Xen", 17, struct.pack("<I", 0x8801)),  # SUPPORTED_FEATURES, 4 bytes
        ("Xen", 13, struct.pack("<QQ", 1, 1)),  # L1_MFN_VALID mask/value
        ("Xen", 19, struct.pack("<III", 0x200000, 0x1000000, 0x3FFFFFFF)),  # PHYS32_RELOC
        ("Xen", 18, struct.pack("<I", 0x1000010)),  # PHYS32_ENTRY, 4 bytes (older kernels)
        ("GNU", 3, DEFAULT_BUILD_ID),  # NT_GNU_BUILD_ID
    ]


def build_elf(
    *,
    elf_class: int = 64,
    entry: int = 0x1000000,
    paddr: int = 0x1000000,
    vaddr: int = 0xFFFFFFFF81000000,
    notes: list[tuple[str, int, bytes]] | None = None,
    banner: bytes | None = BANNER,
    symbols: list[tuple[str, int, int, int]] | None = None,
    text_size: int = 0x200,
    bss: int = 0x1000,
) -> bytes:
    """A small ELF vmlinux: RX segment (.text, .rodata, .notes), RW segment (.data + .bss), PT_NOTE.

    ``symbols``: (name, value, size, STT_*) entries for .symtab, all in .text.
    """
    is64 = elf_class == 64
    notes = xen_notes_default() if notes is None else notes
    ehsize, phentsize, shentsize = (64, 56, 64) if is64 else (52, 32, 40)
    text = bytes([0x90]) * (text_size - 1) + b"\xf4"  # nops, hlt
    rodata = (b"\0" * 16 + banner + b"\0") if banner else b"\0" * 16
    rodata += b"\0" * (-len(rodata) % 4)
    notes_blob = b"".join(note(o, t, d) for o, t, d in notes)
    data_blob = b"\x11" * 0x100

    off_text = 0x1000
    off_ro = off_text + len(text)
    off_notes = off_ro + len(rodata)
    rx_size = off_notes + len(notes_blob) - off_text
    off_data = (off_text + rx_size + 0xFFF) & ~0xFFF
    data_vaddr, data_paddr = vaddr + 0x100000, paddr + 0x100000

    # Sections.
    shstr = bytearray(b"\0")

    def sname(n: str) -> int:
        shstr.extend(n.encode() + b"\0")
        return len(shstr) - len(n) - 1

    sections = [(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)]  # name, type, flags, addr, offset, size, link, info, align, entsize
    sections.append((sname(".text"), SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, vaddr, off_text, len(text), 0, 0, 16, 0))
    sections.append((sname(".rodata"), SHT_PROGBITS, SHF_ALLOC, vaddr + len(text), off_ro, len(rodata), 0, 0, 4, 0))
    sections.append((sname(".notes"), SHT_NOTE, SHF_ALLOC, vaddr + off_notes - off_text, off_notes, len(notes_blob),
                     0, 0, 4, 0))
    sections.append((sname(".data"), SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, data_vaddr, off_data, len(data_blob),
                     0, 0, 16, 0))
    sections.append((sname(".bss"), SHT_NOBITS, SHF_ALLOC | SHF_WRITE, data_vaddr + len(data_blob),
                     off_data + len(data_blob), bss, 0, 0, 16, 0))
    tail = bytearray()
    off_tail = off_data + len(data_blob)
    if symbols:
        strtab = bytearray(b"\0")
        symtab = bytearray(b"\0" * (24 if is64 else 16))
        for name, value, size, kind in symbols:
            nameoff = len(strtab)
            strtab.extend(name.encode() + b"\0")
            info = (1 << 4) | kind  # STB_GLOBAL
            if is64:
                symtab += struct.pack("<IBBHQQ", nameoff, info, 0, 1, value, size)
            else:
                symtab += struct.pack("<IIIBBH", nameoff, value, size, info, 0, 1)
        symtab_idx = len(sections)
        sections.append((sname(".symtab"), SHT_SYMTAB, 0, 0, off_tail, len(symtab), symtab_idx + 1, 1, 8,
                         24 if is64 else 16))
        tail += symtab
        sections.append((sname(".strtab"), SHT_STRTAB, 0, 0, off_tail + len(tail), len(strtab), 0, 0, 1, 0))
        tail += strtab
    shstrndx = len(sections)
    sections.append((sname(".shstrtab"), SHT_STRTAB, 0, 0, off_tail + len(tail), 0, 0, 0, 1, 0))
    tail += shstr
    # fix .shstrtab size (its own name was added after the tuple was made: recompute)
    sections[-1] = sections[-1][:5] + (len(shstr),) + sections[-1][6:]
    off_sh = (off_tail + len(tail) + 7) & ~7

    phdrs = [
        (PT_LOAD, PF_R | PF_X, off_text, vaddr, paddr, rx_size, rx_size, 0x200000),
        (PT_LOAD, PF_R | PF_W, off_data, data_vaddr, data_paddr, len(data_blob), len(data_blob) + bss, 0x200000),
        (PT_NOTE, PF_R, off_notes, vaddr + off_notes - off_text, paddr + off_notes - off_text,
         len(notes_blob), len(notes_blob), 4),
    ]

    out = bytearray(off_sh + shentsize * len(sections))
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1, 1, 0]) + b"\0" * 8
    machine = EM_X86_64 if is64 else EM_386
    if is64:
        out[0:ehsize] = ident + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, entry, ehsize, off_sh, 0,
                                            ehsize, phentsize, len(phdrs), shentsize, len(sections), shstrndx)
    else:
        out[0:ehsize] = ident + struct.pack("<HHIIIIIHHHHHH", 2, machine, 1, entry, ehsize, off_sh, 0,
                                            ehsize, phentsize, len(phdrs), shentsize, len(sections), shstrndx)
    for i, (pt, fl, off, va, pa, fs, ms, al) in enumerate(phdrs):
        at = ehsize + i * phentsize
        if is64:
            out[at:at + phentsize] = struct.pack("<IIQQQQQQ", pt, fl, off, va, pa, fs, ms, al)
        else:
            out[at:at + phentsize] = struct.pack("<IIIIIIII", pt, off, va & 0xFFFFFFFF, pa, fs, ms, fl, al)
    out[off_text:off_text + len(text)] = text
    out[off_ro:off_ro + len(rodata)] = rodata
    out[off_notes:off_notes + len(notes_blob)] = notes_blob
    out[off_data:off_data + len(data_blob)] = data_blob
    out[off_tail:off_tail + len(tail)] = tail
    for i, (nm, ty, fl, ad, of, sz, ln, inf, al, es) in enumerate(sections):
        at = off_sh + i * shentsize
        if is64:
            out[at:at + shentsize] = struct.pack("<IIQQQQIIQQ", nm, ty, fl, ad, of, sz, ln, inf, al, es)
        else:
            out[at:at + shentsize] = struct.pack("<IIIIIIIIII", nm, ty, fl, ad & 0xFFFFFFFF, of, sz, ln, inf, al, es)
    return bytes(out)


# ---- payload codecs, as the kernel build produces them (scripts/Makefile.lib) -----------------

def lz4_legacy(data: bytes, block: int = 8 << 20) -> bytes:
    """lz4 legacy frame: magic 0x184C2102, then (u32 compressed size, block) per <= 8 MiB chunk."""
    import lz4.block

    out = bytearray(struct.pack("<I", 0x184C2102))
    for i in range(0, len(data), block):
        c = lz4.block.compress(data[i:i + block], store_size=False)
        out += struct.pack("<I", len(c)) + c
    return bytes(out)


def compress(codec: str, data: bytes) -> bytes:
    if codec == "gzip":
        return gzip.compress(data, mtime=0)
    if codec == "bzip2":
        return bz2.compress(data)
    if codec == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_ALONE)
    if codec == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    if codec == "lz4":
        return lz4_legacy(data)
    if codec == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=19).compress(data)
    if codec == "lzo":
        # lzop's magic and a made-up body: pvhboot must refuse it by its magic alone.
        return b"\x89LZO\x00\r\n\x1a\n" + b"\0" * 32
    raise ValueError(codec)


CODECS = ("gzip", "bzip2", "lzma", "xz", "lz4", "zstd")


def with_size(compressed: bytes, size: int) -> bytes:
    """size_append: the decompressed size as u32 LE after the payload."""
    return compressed + struct.pack("<I", size)


def build_bzimage(
    vmlinux: bytes | None = None,
    *,
    codec: str = "gzip",
    payload: bytes | None = None,
    setup_sects: int = 4,
    version: int = 0x020F,
    xloadflags: int = 0x3,
    code32_start: int = 0x100000,
    payload_offset: int = 0x100,
    kernel_version: bytes = b"6.9.0-synthetic (test@pvhboot) #1",
) -> bytes:
    """A bzImage: boot sector + setup (setup_sects sectors), then the protected-mode kernel whose
    first payload_offset bytes stand in for the decompressor, then the payload and some tail."""
    if payload is None:
        vmlinux = build_elf() if vmlinux is None else vmlinux
        payload = with_size(compress(codec, vmlinux), len(vmlinux))
    setup_size = ((setup_sects or 4) + 1) * 512
    hdr = setup_header()
    hdr.setup_sects = setup_sects
    hdr.boot_flag = BOOT_FLAG_MAGIC
    hdr.jump = 0x66EB
    hdr.header = HDRS_MAGIC
    hdr.version = version
    hdr.kernel_version = 0x300 - 0x200  # boot.rst: pointer to the string, minus 0x200
    hdr.loadflags = 0x1  # LOADED_HIGH
    hdr.code32_start = code32_start
    hdr.initrd_addr_max = 0x7FFFFFFF
    hdr.kernel_alignment = 0x200000
    hdr.relocatable_kernel = 1
    hdr.min_alignment = 21
    hdr.xloadflags = xloadflags
    hdr.cmdline_size = 0x7FF
    hdr.payload_offset = payload_offset
    hdr.payload_length = len(payload)
    hdr.pref_address = 0x1000000
    hdr.init_size = 0x2000000
    img = bytearray(setup_size)
    hb = bytes(hdr)
    img[SETUP_HEADER_OFFSET:SETUP_HEADER_OFFSET + len(hb)] = hb
    img[0x300:0x300 + len(kernel_version) + 1] = kernel_version + b"\0"
    img += b"\xcc" * payload_offset + payload + b"\0" * 64
    assert ctypes.sizeof(hdr) == 123
    return bytes(img)


def zeros_compressed(codec: str, size: int) -> bytes:
    """A decompression bomb: ``size`` zero bytes through the codec's library, streamed in 8 MiB
    pieces (never held whole).  ``size`` is a multiple of 8 MiB."""
    chunk = bytes(8 << 20)
    if codec == "lz4":
        block = lz4_legacy(chunk)[4:]  # one 8 MiB block: (size, data)
        return struct.pack("<I", 0x184C2102) + block * (size // len(chunk))
    if codec == "zstd":
        import zstandard

        c = zstandard.ZstdCompressor(level=1).compressobj()
    else:
        import zlib

        c = {"gzip": lambda: zlib.compressobj(1, wbits=31),
             "bzip2": lambda: bz2.BZ2Compressor(1),
             "lzma": lambda: lzma.LZMACompressor(format=lzma.FORMAT_ALONE, preset=0),
             "xz": lambda: lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=0, check=lzma.CHECK_CRC32)}[codec]()
    out = bytearray()
    for _ in range(size // len(chunk)):
        out += c.compress(chunk)
    return bytes(out + c.flush())


def graft_setup(real_bzimage: bytes, vmlinux: bytes | None = None) -> bytes:
    """A real bzImage's setup area (its real setup header and setup code) + a small lz4 legacy
    payload of ``vmlinux`` in place of its own: the real header, cheap to parse."""
    setup_size = ((real_bzimage[0x1F1] or 4) + 1) * 512
    vmlinux = build_elf() if vmlinux is None else vmlinux
    payload = with_size(lz4_legacy(vmlinux), len(vmlinux))
    out = bytearray(real_bzimage[:setup_size]) + b"\xcc" * 0x100 + payload
    for name, value in (("payload_offset", 0x100), ("payload_length", len(payload))):
        struct.pack_into("<I", out, SETUP_HEADER_OFFSET + getattr(setup_header, name).offset, value)
    return bytes(out)
