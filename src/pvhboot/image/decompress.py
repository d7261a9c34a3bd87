"""Decompress a bzImage payload (arch/x86/boot/compressed/Makefile, lib/decompress_*.c).

The payload's codec is told by its magic (Documentation/arch/x86/boot.rst, "payload_offset"):
gzip 1f 8b, bzip2 "BZh", lzma 5d 00 00, xz fd 37 7a 58 5a 00, lzo 89 4c 5a 4f, lz4 legacy
02 21 4c 18, zstd 28 b5 2f fd.

The kernel build (scripts/Makefile.lib, ``size_append``) appends the decompressed size as a u32 LE
after every payload, whatever the codec, and payload_length counts those 4 bytes.  We cut them
off before decompressing (the codecs' own tools reject them) and check that the output has exactly
that length.

Memory is bounded by that claim, never by what the compressed bytes would expand to: the claim is
checked against :data:`MAX_DECOMPRESSED` (and, for a bzImage, its setup header's init_size) before
anything is decoded; the decoders are streamed, each call returning at most :data:`OUTPUT_PIECE`
bytes, into one output buffer, an anonymous mapping grown by mremap (never copied) up to the
claim (a 1 GiB claim on a 49 KB stream costs what the stream really produces); one byte past the
claim is refused.  Besides that buffer only the codec's own window is held: the lzma/xz dictionary
(liblzma memlimit, :func:`_lzma_memlimit`) and the zstd window (:data:`ZSTD_WINDOW_MAX`).
"""
from __future__ import annotations

import bz2
import lzma
import mmap
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
# The largest decompressed payload any x86 kernel accepts: arch/x86/boot/compressed/misc.c
# extract_kernel() stops with "Destination virtual address is beyond the kernel mapping area" when
# virt_addr + max(output_len, kernel_total_size) > KERNEL_IMAGE_SIZE, where output_len is this very
# trailer and KERNEL_IMAGE_SIZE is at most 1 GiB (x86-64 with KASLR, asm/page_64_types.h; 512 MiB
# without, and on i386, asm/page_32_types.h).  Real kernels are far below (Debian's: 53 MB).
MAX_DECOMPRESSED = 1 << 30

INPUT_PIECE = 1 << 20  # compressed bytes handed to a decoder per call (zlib copies what it leaves)
OUTPUT_PIECE = 4 << 20  # decompressed bytes taken from a decoder per call
# The largest dictionary the kernel build asks for: `lzma -9` (scripts/Makefile.lib cmd_lzma) uses
# 64 MiB, scripts/xz_wrap.sh 32 MiB.  A larger one is allowed only up to the claimed output: a
# dictionary never needs to be bigger than what it decodes (lib/decompress_unlzma.c streams with a
# MIN(dst_size, dict_size) buffer for the same reason).
LZMA_DICT_FLOOR = 64 << 20
_LZMA_CODER_SLACK = 1 << 20  # liblzma's decoder state besides the dictionary (~30 KiB), rounded up
# scripts/Makefile.lib cmd_zstd22 (`zstd -22 --ultra` from a pipe) gives a 2^27 = 128 MiB window,
# the largest a kernel build makes and zstd's own default decoding limit (ZSTD_WINDOWLOG_LIMIT_DEFAULT).
ZSTD_WINDOW_MAX = 1 << 27


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


def decompress_payload(payload: bytes | memoryview, compression: str | None = None) -> mmap.mmap | bytearray:
    """Decompress a whole payload (including its 4-byte size trailer) and verify the size.

    ImageError (never MemoryError) for a claim over :data:`MAX_DECOMPRESSED`, a stream that
    decodes past its claim or stops short of it, and anything the codec calls corrupt.
    """
    payload = memoryview(payload)
    name = compression or detect_compression(payload)
    if name not in SUPPORTED:
        raise UnsupportedCompression(
            f"bzImage payload is {name}-compressed; pvhboot decompresses {', '.join(SUPPORTED)} "
            f"(rebuild the kernel with another CONFIG_KERNEL_* codec, or extract it with the {name} tool)"
        )
    expected = decompressed_size(payload)
    if expected > MAX_DECOMPRESSED:
        raise ImageError(f"{name} payload's size trailer says {expected} bytes, more than any x86 kernel "
                         f"can be ({MAX_DECOMPRESSED}, KERNEL_IMAGE_SIZE): the payload is corrupt")
    stream = payload[: len(payload) - SIZE_TRAILER]
    out = _Output(name, expected)
    try:
        _decode(name, stream, out)
        if out.size != expected:
            raise ImageError(f"{name} payload decompressed to {out.size} bytes but its size trailer says {expected}")
    except BaseException:
        if isinstance(out.buf, mmap.mmap):
            out.buf.close()  # now, not when the traceback lets go of it
        raise
    return out.buf


def _decode(name: str, stream: memoryview, out: _Output) -> None:
    try:
        _DECODERS[name](stream, out)
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


class _Output:
    """The one output buffer: an anonymous private mapping that doubles (up to the claim) as output
    arrives.  mremap moves its pages instead of copying them (a realloc'd buffer is copied at the
    allocator's whim: the Debian lz4 kernel peaked at twice its output that way), untouched pages
    cost nothing, so resident memory is the output and address space at most twice it; anything
    past the claim is refused."""

    FIRST = 8 << 20

    def __init__(self, codec: str, expected: int) -> None:
        self.codec, self.expected, self.size = codec, expected, 0
        self.buf: mmap.mmap | bytearray = bytearray()
        if expected:
            self.buf = self._mapped(lambda: mmap.mmap(-1, min(expected, self.FIRST),
                                                      flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))

    def _mapped(self, make):
        try:
            return make()
        except OSError as e:  # the host (or RLIMIT_AS) cannot give the address space
            raise ImageError(f"cannot map memory for the {self.codec} payload's {self.expected} decompressed "
                             f"bytes: {e.strerror or e}") from None

    def room(self) -> int:
        """How much the next decoder call may return: one byte past the claim shows an overlong
        stream without decoding the rest of it."""
        return min(OUTPUT_PIECE, self.expected - self.size + 1)

    def add(self, block) -> None:
        end = self.size + len(block)
        if end > self.expected:
            raise ImageError(f"{self.codec} payload decompresses to more than the {self.expected} bytes "
                             "its size trailer says")
        if end > len(self.buf):
            self._mapped(lambda: self.buf.resize(min(self.expected, max(end, 2 * len(self.buf)))))
        self.buf[self.size:end] = block
        self.size = end

    def truncated(self) -> ImageError:
        return ImageError(f"{self.codec} payload ends before its end-of-stream marker "
                          f"(after {self.size} of the {self.expected} bytes its size trailer says)")


def _pieces(stream: memoryview):
    for at in range(0, len(stream), INPUT_PIECE):
        yield stream[at:at + INPUT_PIECE]


def _gzip(stream: memoryview, out: _Output) -> None:
    d = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer
    for piece in _pieces(stream):
        data = piece
        while True:
            room = out.room()
            block = d.decompress(data, room)
            out.add(block)
            if d.eof:
                return
            # With max_length zlib leaves the input it did not reach in unconsumed_tail, and may
            # hold more output for the same input when it filled the room.
            data = d.unconsumed_tail
            if not data and len(block) < room:
                break
    raise out.truncated()


def _buffered(d, stream: memoryview, out: _Output) -> None:
    """bz2 and lzma decompressors: they keep unconsumed input themselves (needs_input)."""
    for piece in _pieces(stream):
        data = piece
        while True:
            out.add(d.decompress(data, out.room()))
            if d.eof:
                return
            if d.needs_input:
                break
            data = b""
    raise out.truncated()


def _bzip2(stream: memoryview, out: _Output) -> None:
    _buffered(bz2.BZ2Decompressor(), stream, out)  # bzip2 state is fixed (< 4 MiB at -9)


def _lzma_memlimit(expected: int) -> int:
    return max(LZMA_DICT_FLOOR, expected) + _LZMA_CODER_SLACK


def _lzma_format(fmt: int):
    def decode(stream: memoryview, out: _Output) -> None:
        # The dictionary size comes from the stream's header (lzma "alone": bytes 1-4; xz: the
        # LZMA2 filter properties) and liblzma allocates it whole: bound it before it is believed.
        limit = _lzma_memlimit(out.expected)
        try:
            _buffered(lzma.LZMADecompressor(format=fmt, memlimit=limit), stream, out)
        except lzma.LZMAError as e:
            if "Memory usage limit" not in str(e):
                raise
            raise ImageError(f"{out.codec} payload's header asks for a dictionary larger than {limit} bytes "
                             f"(more than its {out.expected}-byte output or the kernel build's "
                             f"{LZMA_DICT_FLOOR >> 20} MiB): the payload is corrupt") from None

    return decode


def _lz4_legacy(stream: memoryview, out: _Output) -> None:
    import lz4.block  # imported here: only lz4 kernels pay for it

    n = len(stream)
    if n < 4 or struct.unpack_from("<I", stream, 0)[0] != LZ4_LEGACY_MAGIC:
        raise ImageError("lz4 payload does not start with the legacy frame magic 02 21 4c 18")
    pos = 4
    while pos < n:
        if pos + 4 > n:
            raise ImageError(f"lz4 payload: truncated block header at offset {pos}")
        (size,) = struct.unpack_from("<I", stream, pos)
        pos += 4
        if size == LZ4_LEGACY_MAGIC:  # decompress_unlz4.c: a new legacy frame may follow
            continue
        if size == 0 or pos + size > n:
            raise ImageError(f"lz4 payload: block of {size} bytes at offset {pos - 4} runs past the end ({n})")
        # A block holds at most 8 MiB; lz4.block sizes its buffer to `room`, so a block that
        # would run past the claim fails to fit rather than being decoded whole.
        left = out.expected - out.size + 1
        room = min(LZ4_LEGACY_BLOCK_MAX, left)
        try:
            block = lz4.block.decompress(stream[pos : pos + size], uncompressed_size=room)
        except lz4.block.LZ4BlockError as e:
            if room < LZ4_LEGACY_BLOCK_MAX:
                raise ImageError(f"lz4 payload's block at offset {pos - 4} does not fit in the {left - 1} bytes "
                                 f"left of the {out.expected} its size trailer says (or is corrupt: {e})") from None
            raise
        out.add(block)
        pos += size


def _zstd(stream: memoryview, out: _Output) -> None:
    import zstandard

    # The window is bounded by max_window_size (and by the frame's content size when it has one);
    # the frame's content size itself is not trusted for anything else: reads are sized by room().
    reader = zstandard.ZstdDecompressor(max_window_size=ZSTD_WINDOW_MAX).stream_reader(
        stream, read_size=INPUT_PIECE, read_across_frames=False)
    with reader:
        while True:
            block = reader.read(out.room())
            if not block:
                return  # end of the frame or of the input; a short stream fails the size check
            out.add(block)


_DECODERS = {
    "gzip": _gzip,
    "bzip2": _bzip2,
    "lzma": _lzma_format(lzma.FORMAT_ALONE),
    "xz": _lzma_format(lzma.FORMAT_XZ),
    "lz4": _lz4_legacy,
    "zstd": _zstd,
}
