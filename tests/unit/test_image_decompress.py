"""bzImage payload codecs: every codec round-trips, the size trailer is used and checked, lzo is refused."""
import shutil
import struct
import subprocess

import imagekit
import pytest

from pvhboot.errors import ImageError, UnsupportedCompression
from pvhboot.image.decompress import decompress_payload, detect_compression

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
