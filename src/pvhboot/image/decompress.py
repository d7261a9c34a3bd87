"""Decompress a bzImage payload (arch/x86/boot/compressed/Makefile, lib/decompress_*.c).

The payload's codec is told by its magic (Documentation/arch/x86/boot.rst, "payload_offset"):
gzip 1f 8b, bzip2 "BZh", lzma 5d 00 00, xz fd 37 7a 58 5a 00, lzo 89 4c 5a 4f, lz4 legacy
02 21 4c 18, zstd 28 b5 2f fd.

The kernel build (scripts/Makefile.lib, ``size_append``) appends the decompressed size as a u32 LE
after every payload, whatever the codec, and payload_length counts those 4 bytes.  We cut them
off before decompressing (the codecs' own tools reject them), size the output with them and check
that the output has exactly that length.
"""
from __future__ import annotations

import bz2
import lzma
import struct
import zlib

from ..errors import ImageError, UnsupportedCompression

# Magic numbers in the order they are tested; lzma's is the weakest (3 bytes), so it goes last.
MAGICS: tuple[tuple[str, bytes], ...] = (
    ("gzip", b"\x1f\x8b"),
    ("bzip2", b"BZh"),
    ("xz", b"\xfd7zXZ\x00"),
    ("lzo", b"\x89LZO"),
    ("lz4", b"\x02\x21\x4c\x18"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("lzma", b"\x5d\x00\x00"),
)
SUPPORTED = ("gzip", "bzip2", "lzma", "xz", "lz4", "zstd")

# lib/decompress_unlz4.c: ARCHIVE_MAGICNUMBER starts the legacy frame (and may start another frame
# mid-stream); each block decompresses to at most LZ4_DEFAULT_UNCOMPRESSED_CHUNK_SIZE = 8 MiB.
LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK_MAX = 8 << 20

SIZE_TRAILER = 4  # u32 LE decompressed size appended by size_append
# No x86 kernel image exceeds KERNEL_IMAGE_SIZE (1 GiB with KASLR, arch/x86/include/asm/
# page_64_types.h); a larger trailer is corruption, and must not make us allocate gigabytes.
MAX_DECOMPRESSED = 1 << 30


def detect_compression(payload: bytes | memoryview) -> str:
    """Name of the payload's codec by its magic; ImageError naming the bytes seen otherwise."""
    head = bytes(payload[:6])
    for name, magic in MAGICS:
        if head.startswith(magic):
            return name
    raise ImageError(f"bzImage payload has unknown compression magic {head.hex(' ')}")


def decompressed_size(payload: bytes | memoryview) -> int:
    """The size the kernel build appended after the payload (its last 4 bytes)."""
    if len(payload) < SIZE_TRAILER + 2:
        raise ImageError(f"bzImage payload is too short ({len(payload)} bytes)")
    return struct.unpack_from("<I", payload, len(payload) - SIZE_TRAILER)[0]


def decompress_payload(payload: bytes | memoryview, compression: str | None = None) -> bytes | bytearray:
    """Decompress a whole payload (including its 4-byte size trailer) and verify the size."""
    payload = memoryview(payload)
    name = compression or detect_compression(payload)
    if name not in SUPPORTED:
        raise UnsupportedCompression(
            f"bzImage payload is {name}-compressed; pvhboot decompresses {', '.join(SUPPORTED)} "
            f"(rebuild the kernel with another CONFIG_KERNEL_* codec, or extract it with the {name} tool)"
        )
    expected = decompressed_size(payload)
    if expected > MAX_DECOMPRESSED:
        raise ImageError(f"{name} payload's size trailer says {expected} bytes, more than any kernel image "
                         f"({MAX_DECOMPRESSED}): the payload is corrupt")
    stream = payload[: len(payload) - SIZE_TRAILER]
    try:
        out = _DECODERS[name](stream, expected)
    except ImageError:
        raise
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError) as e:
        raise ImageError(f"{name} payload is corrupt: {e}") from None
    except Exception as e:
        # zstandard.ZstdError and lz4.block.LZ4BlockError, matched by name so that importing this
        # module does not import both libraries.
        if type(e).__name__ in ("ZstdError", "LZ4BlockError"):
            raise ImageError(f"{name} payload is corrupt: {e}") from None
        raise
    if len(out) != expected:
        raise ImageError(
            f"{name} payload decompressed to {len(out)} bytes but its size trailer says {expected}"
        )
    return out


def _limit(expected: int) -> int:
    # Never allocate more than the trailer promises (+1 to notice an overlong stream).
    return expected + 1


def _gzip(stream: memoryview, expected: int) -> bytes:
    d = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer
    out = d.decompress(stream, _limit(expected))
    if not d.eof and len(out) <= expected:
        raise ImageError("gzip payload ends before its end-of-stream marker")
    return out


def _bzip2(stream: memoryview, expected: int) -> bytes:
    d = bz2.BZ2Decompressor()
    out = d.decompress(stream, _limit(expected))
    if not d.eof and len(out) <= expected:
        raise ImageError("bzip2 payload ends before its end-of-stream marker")
    return out


def _lzma_format(fmt: int, label: str):
    def decode(stream: memoryview, expected: int) -> bytes:
        d = lzma.LZMADecompressor(format=fmt)
        out = d.decompress(stream, _limit(expected))
        # lzma "alone" streams from the kernel build carry an unknown size (-1) and an end marker.
        if not d.eof and len(out) <= expected:
            raise ImageError(f"{label} payload ends before its end-of-stream marker")
        return out

    return decode


def _lz4_legacy(stream: memoryview, expected: int) -> bytes:
    import lz4.block  # imported here: only lz4 kernels pay for it

    n = len(stream)
    if n < 4 or struct.unpack_from("<I", stream, 0)[0] != LZ4_LEGACY_MAGIC:
        raise ImageError("lz4 payload does not start with the legacy frame magic 02 21 4c 18")
    out = bytearray(expected)
    pos, done = 4, 0
    while pos < n:
        if pos + 4 > n:
            raise ImageError(f"lz4 payload: truncated block header at offset {pos}")
        (size,) = struct.unpack_from("<I", stream, pos)
        pos += 4
        if size == LZ4_LEGACY_MAGIC:  # decompress_unlz4.c: a new legacy frame may follow
            continue
        if size == 0 or pos + size > n:
            raise ImageError(f"lz4 payload: block of {size} bytes at offset {pos - 4} runs past the end ({n})")
        room = min(LZ4_LEGACY_BLOCK_MAX, expected - done)
        if room <= 0:
            raise ImageError(f"lz4 payload decompresses past the {expected} bytes its size trailer says")
        block = lz4.block.decompress(stream[pos : pos + size], uncompressed_size=room)
        out[done : done + len(block)] = block
        done += len(block)
        pos += size
    if done != expected:
        raise ImageError(f"lz4 payload decompressed to {done} bytes but its size trailer says {expected}")
    return out  # a bytearray: no extra copy of ~50 MB


def _zstd(stream: memoryview, expected: int) -> bytes:
    import zstandard

    d = zstandard.ZstdDecompressor().decompressobj()
    out = d.decompress(stream)
    if not d.eof:
        raise ImageError("zstd payload ends before the end of its frame")
    return out


_DECODERS = {
    "gzip": _gzip,
    "bzip2": _bzip2,
    "lzma": _lzma_format(lzma.FORMAT_ALONE, "lzma"),
    "xz": _lzma_format(lzma.FORMAT_XZ, "xz"),
    "lz4": _lz4_legacy,
    "zstd": _zstd,
}
