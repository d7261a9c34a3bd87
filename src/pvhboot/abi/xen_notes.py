"""Xen ELF notes: note type numbers and how each note's descriptor is encoded.

Mirrors xen/include/public/elfnote.h (and Linux's copy, include/xen/interface/elfnote.h).  The notes
live in a PT_NOTE segment with the owner name "Xen".  elfnote.h: "Numeric types are either 4 or 8
bytes depending on the content of the desc field"; strings are NUL-terminated ASCII.

As in pyelftools (enums.py / descriptions.py), the wire format (:class:`XenNoteFormat`, which
:func:`decode_xen_note` follows) is kept apart from the human descriptions (:data:`DESCRIPTIONS`).
Nothing here does I/O.
"""
from __future__ import annotations

import enum
import struct

# elfnote.h: "The notes should live in a PT_NOTE segment and have "Xen" in the name field."
XEN_NOTE_OWNER = "Xen"


class XEN_ELFNOTE(enum.IntEnum):
    """XEN_ELFNOTE_* type numbers (elfnote.h).  Member names drop the XEN_ELFNOTE_ prefix."""

    INFO = 0
    ENTRY = 1
    HYPERCALL_PAGE = 2
    VIRT_BASE = 3
    PADDR_OFFSET = 4
    XEN_VERSION = 5
    GUEST_OS = 6
    GUEST_VERSION = 7
    LOADER = 8
    PAE_MODE = 9
    FEATURES = 10
    BSD_SYMTAB = 11
    HV_START_LOW = 12
    L1_MFN_VALID = 13
    SUSPEND_CANCEL = 14
    INIT_P2M = 15
    MOD_START_PFN = 16
    SUPPORTED_FEATURES = 17
    PHYS32_ENTRY = 18
    PHYS32_RELOC = 19


class XenNoteFormat(enum.Enum):
    """How a note's descriptor is laid out on the wire."""

    NUMERIC = "numeric"  # one little-endian integer of descsz 4 or 8 bytes
    STRING = "string"  # NUL-terminated ASCII
    NUMERIC_ARRAY_U64 = "u64[]"  # maddr_t-sized values (L1_MFN_VALID: mask/value pairs)
    PHYS32_RELOC = "u32[<=3]"  # up to three u32: align, min, max
    RAW = "raw"  # anything else: the bytes as they are


_FORMAT: dict[int, XenNoteFormat] = {
    XEN_ELFNOTE.INFO: XenNoteFormat.STRING,  # "NAME=VALUE pair (string)"
    XEN_ELFNOTE.ENTRY: XenNoteFormat.NUMERIC,
    XEN_ELFNOTE.HYPERCALL_PAGE: XenNoteFormat.NUMERIC,
    XEN_ELFNOTE.VIRT_BASE: XenNoteFormat.NUMERIC,
    XEN_ELFNOTE.PADDR_OFFSET: XenNoteFormat.NUMERIC,
    XEN_ELFNOTE.XEN_VERSION: XenNoteFormat.STRING,
    XEN_ELFNOTE.GUEST_OS: XenNoteFormat.STRING,
    XEN_ELFNOTE.GUEST_VERSION: XenNoteFormat.STRING,
    XEN_ELFNOTE.LOADER: XenNoteFormat.STRING,
    XEN_ELFNOTE.PAE_MODE: XenNoteFormat.STRING,
    XEN_ELFNOTE.FEATURES: XenNoteFormat.STRING,
    XEN_ELFNOTE.BSD_SYMTAB: XenNoteFormat.STRING,  # "yes" or "no"
    XEN_ELFNOTE.HV_START_LOW: XenNoteFormat.NUMERIC,
    XEN_ELFNOTE.L1_MFN_VALID: XenNoteFormat.NUMERIC_ARRAY_U64,
    XEN_ELFNOTE.SUSPEND_CANCEL: XenNoteFormat.NUMERIC,
    XEN_ELFNOTE.INIT_P2M: XenNoteFormat.NUMERIC,
    XEN_ELFNOTE.MOD_START_PFN: XenNoteFormat.NUMERIC,
    XEN_ELFNOTE.SUPPORTED_FEATURES: XenNoteFormat.NUMERIC,
    XEN_ELFNOTE.PHYS32_ENTRY: XenNoteFormat.NUMERIC,
    XEN_ELFNOTE.PHYS32_RELOC: XenNoteFormat.PHYS32_RELOC,
}

# Human descriptions, apart from the wire format (pyelftools' descriptions.py habit).
DESCRIPTIONS: dict[int, str] = {
    XEN_ELFNOTE.INFO: "NAME=VALUE information string",
    XEN_ELFNOTE.ENTRY: "Xen PV entry point (virtual address)",
    XEN_ELFNOTE.HYPERCALL_PAGE: "hypercall transfer page (virtual address)",
    XEN_ELFNOTE.VIRT_BASE: "virtual address the image is mapped at",
    XEN_ELFNOTE.PADDR_OFFSET: "offset of ELF paddr from the pseudo-physical address",
    XEN_ELFNOTE.XEN_VERSION: "Xen version the guest works with",
    XEN_ELFNOTE.GUEST_OS: "guest operating system name",
    XEN_ELFNOTE.GUEST_VERSION: "guest operating system version",
    XEN_ELFNOTE.LOADER: "loader type",
    XEN_ELFNOTE.PAE_MODE: "PAE support (yes, no, bimodal)",
    XEN_ELFNOTE.FEATURES: "required (!) and optional Xen features, '|'-separated",
    XEN_ELFNOTE.BSD_SYMTAB: "kernel wants the symbol table loaded",
    XEN_ELFNOTE.HV_START_LOW: "lowest address the hypervisor hole can begin at",
    XEN_ELFNOTE.L1_MFN_VALID: "mask/value pairs recognising L1 PTEs that carry valid MFNs",
    XEN_ELFNOTE.SUSPEND_CANCEL: "guest supports cooperative suspend cancellation",
    XEN_ELFNOTE.INIT_P2M: "virtual address of the initial phys-to-machine map",
    XEN_ELFNOTE.MOD_START_PFN: "initrd given as a PFN rather than a virtual address",
    XEN_ELFNOTE.SUPPORTED_FEATURES: "bitmap of supported XENFEAT_* features",
    XEN_ELFNOTE.PHYS32_ENTRY: "PVH 32-bit physical entry point",
    XEN_ELFNOTE.PHYS32_RELOC: "PVH entry is relocatable: alignment, min and max load address",
}

# PHYS32_RELOC defaults when a field is absent (Xen libelf, x86: 2 MiB alignment, 0, 4 GiB - 1).
PHYS32_RELOC_FIELDS = ("align", "min", "max")


def xen_note_name(note_type: int) -> str:
    """'PHYS32_ENTRY' for 18; 'UNKNOWN_<n>' for a type elfnote.h does not define."""
    try:
        return XEN_ELFNOTE(note_type).name
    except ValueError:
        return f"UNKNOWN_{note_type}"


def xen_note_format(note_type: int) -> XenNoteFormat:
    return _FORMAT.get(note_type, XenNoteFormat.RAW)


def decode_xen_note(note_type: int, desc: bytes, little_endian: bool = True) -> int | str | bytes | tuple[int, ...]:
    """Decode one Xen note's descriptor by its type and size.

    A descriptor that does not fit its type's format (e.g. a numeric note of 3 bytes, a string
    without its NUL) is returned as raw bytes rather than guessed at.
    """
    fmt = xen_note_format(note_type)
    e = "<" if little_endian else ">"
    n = len(desc)
    if fmt is XenNoteFormat.NUMERIC:
        if n == 4:
            return struct.unpack(e + "I", desc)[0]
        if n == 8:
            return struct.unpack(e + "Q", desc)[0]
    elif fmt is XenNoteFormat.STRING:
        nul = desc.find(b"\0")
        # elfnote.h says NUL-terminated; Linux's FEATURES note is emitted with .ascii (no NUL)
        # and sized exactly to its text, so accept an unterminated printable string too.
        text = desc if nul < 0 else desc[:nul]
        if (nul < 0 or not desc[nul:].strip(b"\0")) and all(0x20 <= b < 0x7F for b in text):
            return text.decode("ascii")
    elif fmt is XenNoteFormat.NUMERIC_ARRAY_U64:
        if n and n % 8 == 0:
            return tuple(v for (v,) in struct.iter_unpack(e + "Q", desc))
    elif fmt is XenNoteFormat.PHYS32_RELOC and n % 4 == 0 and n <= 12:
        return tuple(v for (v,) in struct.iter_unpack(e + "I", desc))
    return bytes(desc)
