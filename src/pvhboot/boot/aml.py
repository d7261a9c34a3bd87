"""A small AML (ACPI Machine Language) writer: just what pvhboot's DSDT needs.

Encodings from the ACPI 6.5 specification, chapter 20 "ACPI Machine Language (AML) Specification":
§20.2.4 package length encoding, §20.2.2 name objects, §20.2.3 data objects, §20.2.5 term objects;
resource descriptors from §6.4.2 (small resources: IRQ, I/O port, End Tag).  Each function returns
bytes; compose them by concatenation.
"""
from __future__ import annotations

# Opcodes (ACPI 6.5 §20.3 "AML Byte Stream Byte Values").
ZERO_OP = 0x00
ONE_OP = 0x01
NAME_OP = 0x08
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
STRING_PREFIX = 0x0D
QWORD_PREFIX = 0x0E
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
METHOD_OP = 0x14
DUAL_NAME_PREFIX = 0x2E
MULTI_NAME_PREFIX = 0x2F
EXT_OP_PREFIX = 0x5B
DEVICE_OP = 0x82  # after EXT_OP_PREFIX
ROOT_CHAR = 0x5C  # '\'
PARENT_PREFIX_CHAR = 0x5E  # '^'
RETURN_OP = 0xA4

# Small resource descriptor tags (ACPI 6.5 §6.4.2): (type << 3) | length.
IRQ_NO_FLAGS_TAG = 0x22  # IRQ descriptor, type 0x04, length 2 (no information byte)
IO_PORT_TAG = 0x47  # I/O port descriptor, type 0x08, length 7
END_TAG = 0x79  # End Tag, type 0x0F, length 1
# Large resource descriptor tags (ACPI 6.5 §6.4.3): bit 7 set | item name.
MEMORY32_FIXED_TAG = 0x86  # 32-bit Fixed Memory Range Descriptor (§6.4.3.4), 9 bytes of data
EXTENDED_IRQ_TAG = 0x89  # Extended Interrupt Descriptor (§6.4.3.6)
MEMORY32_READ_WRITE = 0x01  # information bit 0: writeable
IRQ_CONSUMER, IRQ_EDGE, IRQ_ACTIVE_LOW, IRQ_SHARED = 0x01, 0x02, 0x04, 0x08  # §6.4.3.6 byte 3
IO_DECODE16 = 0x01  # I/O descriptor information bit 0: full 16-bit decode


def pkg_length(body_len: int) -> bytes:
    """PkgLength for a body of ``body_len`` bytes; the encoded length counts its own bytes (§20.2.4)."""
    if body_len + 1 < 0x40:
        return bytes([body_len + 1])
    for extra in (1, 2, 3):
        total = body_len + 1 + extra
        if total < 1 << (4 + 8 * extra):
            out = [(extra << 6) | (total & 0xF)]
            out += [(total >> (4 + 8 * i)) & 0xFF for i in range(extra)]
            return bytes(out)
    raise ValueError(f"AML package of {body_len} bytes is too long")


def name_seg(seg: str) -> bytes:
    """A NameSeg: 4 characters, [A-Z_][A-Z0-9_]*, padded with '_'."""
    if not 1 <= len(seg) <= 4 or not (seg[0].isupper() or seg[0] == "_"):
        raise ValueError(f"bad AML name segment {seg!r}")
    if not all(c.isupper() or c.isdigit() or c == "_" for c in seg):
        raise ValueError(f"bad AML name segment {seg!r}")
    return seg.ljust(4, "_").encode("ascii")


def name_string(path: str) -> bytes:
    """``\\_SB_.COM1``, ``_HID`` or ``^FOO`` as a NameString (§20.2.2)."""
    prefix = b""
    while path.startswith(("\\", "^")):
        prefix += bytes([ROOT_CHAR if path[0] == "\\" else PARENT_PREFIX_CHAR])
        path = path[1:]
    segs = [s for s in path.split(".") if s] if path else []
    if not segs:
        return prefix + b"\0"  # NullName
    body = b"".join(name_seg(s) for s in segs)
    if len(segs) == 1:
        return prefix + body
    if len(segs) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + body
    return prefix + bytes([MULTI_NAME_PREFIX, len(segs)]) + body


def integer(value: int) -> bytes:
    """The shortest ComputationalData for ``value`` (ZeroOp, OneOp, Byte/Word/DWord/QWordConst)."""
    if value < 0 or value >= 1 << 64:
        raise ValueError(f"AML integer {value} out of range")
    if value == 0:
        return bytes([ZERO_OP])
    if value == 1:
        return bytes([ONE_OP])
    for prefix, size in ((BYTE_PREFIX, 1), (WORD_PREFIX, 2), (DWORD_PREFIX, 4), (QWORD_PREFIX, 8)):
        if value < 1 << (8 * size):
            return bytes([prefix]) + value.to_bytes(size, "little")
    raise AssertionError


def string(text: str) -> bytes:
    return bytes([STRING_PREFIX]) + text.encode("ascii") + b"\0"


def eisa_id(text: str) -> int:
    """EisaId("PNP0501") -> 0x0105D041: three 5-bit letters then four hex digits, big endian bytes
    stored as a little-endian DWORD (ACPI 6.5 §19.6.35)."""
    if len(text) != 7 or not text[:3].isalpha() or not text[:3].isupper():
        raise ValueError(f"bad EISA id {text!r}")
    l1, l2, l3 = (ord(c) - 0x40 for c in text[:3])
    digits = int(text[3:], 16)
    raw = bytes([(l1 << 2) | (l2 >> 3), ((l2 & 7) << 5) | l3, digits >> 8, digits & 0xFF])
    return int.from_bytes(raw, "little")


def name(path: str, data: bytes) -> bytes:
    """Name (path, data): DefName := NameOp NameString DataRefObject."""
    return bytes([NAME_OP]) + name_string(path) + data


def package(*elements: bytes) -> bytes:
    """Package (N) {elements}: PackageOp PkgLength NumElements PackageElementList."""
    body = bytes([len(elements)]) + b"".join(elements)
    return bytes([PACKAGE_OP]) + pkg_length(len(body)) + body


def buffer(data: bytes) -> bytes:
    """Buffer () {data}: BufferOp PkgLength BufferSize ByteList."""
    body = integer(len(data)) + data
    return bytes([BUFFER_OP]) + pkg_length(len(body)) + body


def scope(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([SCOPE_OP]) + pkg_length(len(body)) + body


def device(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([EXT_OP_PREFIX, DEVICE_OP]) + pkg_length(len(body)) + body


def method(path: str, args: int, *terms: bytes, serialized: bool = False) -> bytes:
    body = name_string(path) + bytes([(args & 7) | (8 if serialized else 0)]) + b"".join(terms)
    return bytes([METHOD_OP]) + pkg_length(len(body)) + body


def return_(value: bytes) -> bytes:
    return bytes([RETURN_OP]) + value


# Resource descriptors (ACPI 6.5 §6.4.2).
def io_port(minimum: int, maximum: int, alignment: int, length: int, decode16: bool = True) -> bytes:
    """IO (Decode16, min, max, alignment, length): 8-byte small descriptor."""
    return (bytes([IO_PORT_TAG, IO_DECODE16 if decode16 else 0]) + minimum.to_bytes(2, "little")
            + maximum.to_bytes(2, "little") + bytes([alignment, length]))


def irq_no_flags(*irqs: int) -> bytes:
    """IRQNoFlags () {irqs}: 3-byte IRQ descriptor (edge, active high, exclusive)."""
    mask = 0
    for irq in irqs:
        if not 0 <= irq < 16:
            raise ValueError(f"ISA IRQ {irq} out of range")
        mask |= 1 << irq
    return bytes([IRQ_NO_FLAGS_TAG]) + mask.to_bytes(2, "little")


def memory32_fixed(base: int, length: int, writeable: bool = True) -> bytes:
    """Memory32Fixed (ReadWrite, base, length): 12-byte large descriptor (§6.4.3.4)."""
    return (bytes([MEMORY32_FIXED_TAG]) + (9).to_bytes(2, "little") + bytes([MEMORY32_READ_WRITE if writeable else 0])
            + base.to_bytes(4, "little") + length.to_bytes(4, "little"))


def interrupt(*gsis: int, edge: bool = True, active_low: bool = False, shared: bool = False) -> bytes:
    """Interrupt (ResourceConsumer, Edge|Level, ActiveHigh|Low, Exclusive|Shared) {gsis} (§6.4.3.6)."""
    if not 1 <= len(gsis) <= 255:
        raise ValueError("an interrupt descriptor lists 1..255 interrupts")
    flags = (IRQ_CONSUMER | (IRQ_EDGE if edge else 0) | (IRQ_ACTIVE_LOW if active_low else 0)
             | (IRQ_SHARED if shared else 0))
    body = bytes([flags, len(gsis)]) + b"".join(g.to_bytes(4, "little") for g in gsis)
    return bytes([EXTENDED_IRQ_TAG]) + len(body).to_bytes(2, "little") + body


def resource_template(*descriptors: bytes) -> bytes:
    """ResourceTemplate () {...}: a Buffer ending with an End Tag whose checksum byte is 0
    (0 means 'treat the checksum as valid', §6.4.2.9)."""
    return buffer(b"".join(descriptors) + bytes([END_TAG, 0]))
