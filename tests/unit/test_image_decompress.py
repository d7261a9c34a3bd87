"""bzImage payload codecs: every codec round-trips, the size trailer is used and checked, lzo is refused,
and decompression bombs are refused with pvhboot's error within memory bounded by the trailer's claim."""
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import imagekit
import pytest

from pvhboot.errors import ImageError, UnsupportedCompression
from pvhboot.image.bzimage import parse_bzimage
from pvhboot.image.decompress import LZMA_DICT_FLOOR, MAX_DECOMPRESSED, decompress_payload, detect_compression

DATA = imagekit.build_elf() * 3  # ~25 KB of ELF-looking bytes


@pytest.mark.parametrize("codec", imagekit.CODECS)
def test_codec_round_trip(codec):
    payload = imagekit.with_size(imagekit.compress(codec, DATA), len(DATA))
    assert detect_compression(payload) == codec
    assert bytes(decompress_payload(payload)) == DATA


@pytest.mark.parametrize("codec", imagekit.CODECS)
def test_size_trailer_mismatch_is_one_exact_error(codec):
    payload = imagekit.with_size(imagekit.compress(codec, DATA), len(DATA) + 1)
    with pytest.raises(ImageError, match=f"^{codec} payload decompressed to {len(DATA)} bytes "
                                         f"but its size trailer says {len(DATA) + 1}$"):
        decompress_payload(payload)


@pytest.mark.parametrize("codec", ["gzip", "bzip2", "xz", "lz4", "zstd"])
def test_truncated_stream_is_image_error(codec):
    compressed = imagekit.compress(codec, DATA)
    payload = imagekit.with_size(compressed[: len(compressed) // 2], len(DATA))
    with pytest.raises(ImageError) as e:
        decompress_payload(payload)
    assert codec in str(e.value)


def test_lzo_is_unsupported_compression():
    payload = imagekit.with_size(imagekit.compress("lzo", DATA), len(DATA))
    assert detect_compression(payload) == "lzo"
    with pytest.raises(UnsupportedCompression, match="lzo-compressed"):
        decompress_payload(payload)


def test_unknown_magic_names_the_bytes():
    with pytest.raises(ImageError, match="unknown compression magic 00 11 22 33 44 55"):
        detect_compression(bytes.fromhex("001122334455") + b"\0" * 10)


def test_lz4_many_blocks_and_a_second_frame_magic():
    # decompress_unlz4.c: a chunk size equal to the magic starts another legacy frame.
    two = imagekit.lz4_legacy(DATA[:10000], block=4096) + imagekit.lz4_legacy(DATA[10000:], block=3000)[0:]
    assert bytes(decompress_payload(imagekit.with_size(two, len(DATA)))) == DATA


def test_lz4_block_past_end():
    frame = imagekit.lz4_legacy(DATA)
    bad = frame[:4] + struct.pack("<I", len(frame)) + frame[8:]
    with pytest.raises(ImageError, match=r"^lz4 payload: block of \d+ bytes at offset 4 runs past the end"):
        decompress_payload(imagekit.with_size(bad, len(DATA)))


@pytest.mark.parametrize("tool,args,codec", [
    ("lz4", ["-l", "-9", "-c"], "lz4"),  # what scripts/Makefile.lib runs (lz4 -l)
    ("zstd", ["-19", "-c", "-q"], "zstd"),
])
def test_payload_made_by_the_codec_tool(tool, args, codec):
    if not shutil.which(tool):
        pytest.skip(f"{tool} is not installed")
    compressed = subprocess.run([tool, *args], input=DATA, stdout=subprocess.PIPE, check=True).stdout
    payload = imagekit.with_size(compressed, len(DATA))
    assert detect_compression(payload) == codec
    assert bytes(decompress_payload(payload)) == DATA


# ---- decompression bombs: refused with pvhboot's error, memory bounded by the trailer's claim ----
#
# Each bomb is decoded in a child process whose address space is capped (RLIMIT_AS: what it had
# after start-up + 512 MiB, so a 3.4 GiB dictionary or a 4 GiB output cannot even be reserved) and
# whose peak RSS growth (ru_maxrss) is reported back.

_CHILD = r"""
import json, resource, sys
import lz4.block, zstandard  # decompress imports them lazily: load them before the baseline
from pvhboot.errors import PvhbootError
from pvhboot.image.decompress import decompress_payload

payload = open(sys.argv[1], "rb").read()
vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + (512 << 20), resource.RLIM_INFINITY))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    out = decompress_payload(payload)
    error = None
except PvhbootError as e:
    error = str(e)
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps({"error": error, "grew": grew}))
"""

MiB = 1 << 20
CLAIM = 32 * MiB  # what the bombs' trailers claim (the bombs themselves expand further)


def _src_path() -> str:
    import pvhboot

    return os.path.dirname(os.path.dirname(pvhboot.__file__))


def _decode_in_child(tmp_path, payload: bytes) -> tuple[str | None, int]:
    path = tmp_path / "payload"
    path.write_bytes(payload)
    env = dict(os.environ, PYTHONPATH=_src_path())
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr  # a MemoryError would land here, with its traceback
    result = json.loads(proc.stdout)
    return result["error"], result["grew"]


def test_zstd_bomb_of_4_gib_is_refused_at_the_claim(tmp_path):
    """The issue's 166 KB zstd payload that expands to 4 GiB (4.2 GB resident before MemoryError)."""
    bomb = imagekit.zeros_compressed("zstd", 4 << 30)
    assert len(bomb) < 200_000
    error, grew = _decode_in_child(tmp_path, imagekit.with_size(bomb, CLAIM))
    assert error == f"zstd payload decompresses to more than the {CLAIM} bytes its size trailer says"
    assert grew < CLAIM + 16 * MiB  # the claim, not the 4 GiB, nor two copies of the claim


@pytest.mark.parametrize("codec", ["gzip", "bzip2", "lzma", "xz"])
def test_bomb_is_refused_at_the_claim_with_one_output_buffer(tmp_path, codec):
    """Streams that expand past their trailer's claim stop one byte past it; the output is held once
    (the old decoders returned the output as one bytes object joined from their blocks: 2x)."""
    error, grew = _decode_in_child(tmp_path, imagekit.with_size(imagekit.zeros_compressed(codec, 48 * MiB), CLAIM))
    assert error == f"{codec} payload decompresses to more than the {CLAIM} bytes its size trailer says"
    assert grew < CLAIM + 16 * MiB


def test_lz4_bomb_is_refused_at_the_claim(tmp_path):
    bomb = imagekit.zeros_compressed("lz4", 48 * MiB)
    error, grew = _decode_in_child(tmp_path, imagekit.with_size(bomb, CLAIM))
    # 8 MiB blocks: the first four fill the claim, the fifth has no room left.
    assert error.startswith(f"lz4 payload's block at offset {_lz4_block_offset(bomb, 4)} does not fit in the "
                            f"0 bytes left of the {CLAIM} its size trailer says (or is corrupt: ")
    assert grew < CLAIM + 16 * MiB


def _lz4_block_offset(frame: bytes, n: int) -> int:
    """File offset of the n-th block header (0-based) of a legacy lz4 frame."""
    pos = 4
    for _ in range(n):
        pos += 4 + struct.unpack_from("<I", frame, pos)[0]
    return pos


@pytest.mark.parametrize("codec", imagekit.CODECS)
def test_a_claim_of_1_gib_costs_only_what_the_stream_produces(tmp_path, codec):
    """A 25 KB stream whose trailer claims the 1 GiB cap: lz4 used to reserve the claim up front
    (a 49 KB image cost 1.07 GB); now nothing is allocated beyond what is decoded."""
    error, grew = _decode_in_child(tmp_path, imagekit.with_size(imagekit.compress(codec, DATA), 1 << 30))
    assert error == f"{codec} payload decompressed to {len(DATA)} bytes but its size trailer says {1 << 30}"
    assert grew < 16 * MiB


def test_a_claim_past_the_cap_is_refused_before_decoding():
    payload = imagekit.with_size(imagekit.compress("zstd", DATA), MAX_DECOMPRESSED + 1)
    with pytest.raises(ImageError, match=f"^zstd payload's size trailer says {MAX_DECOMPRESSED + 1} bytes, more "
                                         r"than any x86 kernel can be \(1073741824, KERNEL_IMAGE_SIZE\)"):
        decompress_payload(payload)


def test_lzma_header_claiming_a_3_4_gib_dictionary(tmp_path):
    """The issue's payload whose magic was rewritten to lzma (5d 00 00: props, then the dictionary
    size's low bytes): its header claims a 0xcccc0000-byte dictionary, which liblzma would allocate
    whole; the memlimit refuses it first."""
    stream = bytearray(imagekit.compress("lzma", DATA))
    struct.pack_into("<I", stream, 1, 0xCCCC0000)  # lzma "alone" header: props, dict_size u32, size u64
    error, grew = _decode_in_child(tmp_path, imagekit.with_size(bytes(stream), len(DATA)))
    limit = LZMA_DICT_FLOOR + (1 << 20)
    assert error == (f"lzma payload's header asks for a dictionary larger than {limit} bytes (more than its "
                     f"{len(DATA)}-byte output or the kernel build's 64 MiB): the payload is corrupt")
    assert grew < 16 * MiB


def test_xz_block_claiming_a_4_gib_dictionary(tmp_path):
    stream = bytearray(imagekit.compress("xz", DATA))
    # xz file format 3.1: the block header follows the 12-byte stream header; with one filter and no
    # sizes it is [size][flags 0][filter id 0x21 LZMA2][props size 1][dict byte]..[CRC32].
    hdr_size = (stream[12] + 1) * 4
    assert stream[13:16] == b"\x00\x21\x01"
    stream[16] = 40  # LZMA2 dictionary byte 40: 4 GiB - 1
    struct.pack_into("<I", stream, 12 + hdr_size - 4, zlib.crc32(stream[12:12 + hdr_size - 4]))
    error, grew = _decode_in_child(tmp_path, imagekit.with_size(bytes(stream), len(DATA)))
    assert error is not None and error.startswith("xz payload's header asks for a dictionary larger than")
    assert grew < 16 * MiB


def test_bomb_in_a_bzimage_is_one_cli_line_exit_2(tmp_path):
    bomb = imagekit.with_size(imagekit.zeros_compressed("zstd", 1 << 30), CLAIM)
    path = tmp_path / "bzImage"
    path.write_bytes(imagekit.build_bzimage(payload=bomb))
    env = dict(os.environ, PYTHONPATH=_src_path())
    for argv in (["inspect", path], ["plan", path], ["extract", path, "-o", tmp_path / "out"]):
        proc = subprocess.run([sys.executable, "-m", "pvhboot", *map(str, argv)], capture_output=True,
                              text=True, env=env)
        assert proc.returncode == 2, proc
        assert proc.stderr == (f"pvhboot: error: {path}: zstd payload decompresses to more than the {CLAIM} "
                               "bytes its size trailer says\n")
    assert not (tmp_path / "out").exists()


def test_bzimage_claim_past_init_size_is_refused_before_decoding():
    payload = imagekit.with_size(imagekit.compress("gzip", DATA), 0x2000001)  # imagekit: init_size 0x2000000
    with pytest.raises(ImageError, match=r"^bzImage payload's size trailer says 33554433 bytes, more than the "
                                         r"setup header's init_size 0x2000000 the kernel decompresses into"):
        parse_bzimage(imagekit.build_bzimage(payload=payload))


def test_output_mapping_refused_by_the_host_is_image_error(monkeypatch):
    import mmap as mmap_module

    def refuse(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(mmap_module, "mmap", refuse)
    payload = imagekit.with_size(imagekit.compress("gzip", DATA), len(DATA))
    with pytest.raises(ImageError, match=f"^cannot map memory for the gzip payload's {len(DATA)} decompressed "
                                         "bytes: Cannot allocate memory$"):
        decompress_payload(payload)


def test_output_grows_past_its_first_mapping():
    """Outputs larger than the first 8 MiB mapping are grown in place (mremap) and stay exact."""
    data = bytes(range(256)) * (40 * MiB // 256) + b"tail"
    out = decompress_payload(imagekit.with_size(imagekit.compress("zstd", data), len(data)))
    assert len(out) == len(data) and out[:] == data
