"""bzImage parsing: synthetic bzImages for every codec, and "corrupt one field, get one exact error"."""
import struct

import imagekit
import pytest

from pvhboot.abi.bootparam import SETUP_HEADER_OFFSET, setup_header
from pvhboot.errors import BootError, ImageError, UnsupportedCompression
from pvhboot.image import load_kernel, parse_bzimage, parse_elf

VMLINUX = imagekit.build_elf()


def _field_offset(name: str) -> int:
    return SETUP_HEADER_OFFSET + getattr(setup_header, name).offset


def _set(img: bytes, name: str, value: int) -> bytes:
    field = getattr(setup_header, name)
    out = bytearray(img)
    out[_field_offset(name):_field_offset(name) + field.size] = value.to_bytes(field.size, "little")
    return bytes(out)


@pytest.mark.parametrize("codec", imagekit.CODECS)
def test_every_codec(codec, tmp_path):
    path = tmp_path / f"bzImage.{codec}"
    path.write_bytes(imagekit.build_bzimage(VMLINUX, codec=codec))
    k = load_kernel(path)
    assert k.format == "bzimage"
    bz = k.bzimage
    assert bz.compression == codec
    assert bz.boot_protocol == (2, 15)
    assert bz.setup_size == 5 * 512
    assert bz.payload_offset == 5 * 512 + 0x100
    assert bytes(bz.payload.data) == VMLINUX
    assert bz.version_string == "6.9.0-synthetic (test@pvhboot) #1"
    assert bz.header["kernel_alignment"] == 0x200000 and bz.header["cmdline_size"] == 0x7FF
    expected = parse_elf(VMLINUX)
    assert k.xen_notes == expected.xen_notes and k.segments == expected.segments
    e = k.entries
    assert (e.pvh, e.linux32, e.linux64, e.xen_pv) == (0x1000010, 0x100000, 0x100200, 0xFFFFFFFF81000040)
    assert k.linux_version == imagekit.BANNER.decode().rstrip("\n")


def test_setup_sects_zero_means_four():
    bz = parse_bzimage(imagekit.build_bzimage(VMLINUX, setup_sects=0))
    assert bz.setup_size == 5 * 512 and bytes(bz.payload.data) == VMLINUX
    bz = parse_bzimage(imagekit.build_bzimage(VMLINUX, setup_sects=39))
    assert bz.setup_size == 40 * 512 and bytes(bz.payload.data) == VMLINUX


def test_no_xlf_kernel_64_means_no_linux64(tmp_path):
    path = tmp_path / "bz32"
    path.write_bytes(imagekit.build_bzimage(VMLINUX, xloadflags=0))
    k = load_kernel(path)
    assert k.entries.linux64 is None and k.entries.linux32 == 0x100000
    with pytest.raises(BootError, match="does not set XLF_KERNEL_64"):
        k.require_entry("linux64")


def test_without_decompression():
    bz = parse_bzimage(imagekit.build_bzimage(VMLINUX, codec="xz"), decompress=False)
    assert bz.payload is None and bz.compression == "xz"


def test_lzo_is_unsupported(tmp_path):
    path = tmp_path / "bz.lzo"
    payload = imagekit.with_size(imagekit.compress("lzo", VMLINUX), len(VMLINUX))
    path.write_bytes(imagekit.build_bzimage(payload=payload))
    with pytest.raises(UnsupportedCompression, match=f"^{path}: bzImage payload is lzo-compressed"):
        load_kernel(path)


# ---- corrupt one field, get one exact error ------------------------------------------------------

GOOD = imagekit.build_bzimage(VMLINUX)


def test_bad_hdrs_magic():
    with pytest.raises(ImageError,
                       match=r"^bzImage header signature at 0x202 is 0x53726449, expected 0x53726448 \('HdrS'\)$"):
        parse_bzimage(_set(GOOD, "header", 0x53726449))


def test_bad_hdrs_magic_via_load_kernel(tmp_path):
    path = tmp_path / "bz"
    path.write_bytes(_set(GOOD, "header", 0))
    with pytest.raises(ImageError, match="nor a bzImage \\(no 'HdrS' at 0x202\\)$"):
        load_kernel(path)


def test_bad_boot_flag():
    with pytest.raises(ImageError, match="^bzImage boot_flag at 0x1fe is 0xaa56, expected 0xaa55$"):
        parse_bzimage(_set(GOOD, "boot_flag", 0xAA56))


def test_old_protocol():
    with pytest.raises(ImageError, match=r"^bzImage boot protocol 2.07 predates 2.08"):
        parse_bzimage(_set(GOOD, "version", 0x0207))


def test_payload_offset_past_eof():
    with pytest.raises(ImageError, match=r"^bzImage payload \(payload_offset 0x100000, payload_length 0x[0-9a-f]+, "
                                         r".*runs past the end of the file"):
        parse_bzimage(_set(GOOD, "payload_offset", 0x100000))


def test_payload_length_zero():
    with pytest.raises(ImageError, match=r"payload_length 0x0, .*is empty or runs past the end"):
        parse_bzimage(_set(GOOD, "payload_length", 0))


def test_setup_sects_past_eof():
    with pytest.raises(ImageError, match=r"^bzImage setup_sects 255 puts the protected-mode kernel at 0x20000, "
                                         r"past the end of the file"):
        parse_bzimage(_set(imagekit.build_bzimage(VMLINUX, codec="xz"), "setup_sects", 255))


def test_size_trailer_mismatch():
    payload = imagekit.with_size(imagekit.compress("gzip", VMLINUX), len(VMLINUX) - 1)
    with pytest.raises(ImageError, match=f"^gzip payload decompresses to more than the {len(VMLINUX) - 1} "
                                         "bytes its size trailer says$"):
        parse_bzimage(imagekit.build_bzimage(payload=payload))


def test_unknown_payload_magic():
    payload = b"\x42" * 64 + struct.pack("<I", 64)
    with pytest.raises(ImageError, match="^bzImage payload has unknown compression magic 42 42 42 42 42 42$"):
        parse_bzimage(imagekit.build_bzimage(payload=payload))


def test_payload_not_an_elf():
    data = b"not an elf at all" * 10
    payload = imagekit.with_size(imagekit.compress("gzip", data), len(data))
    with pytest.raises(ImageError, match=r"^decompressed gzip payload: not an ELF file \(starts with 6e 6f 74 20\)$"):
        parse_bzimage(imagekit.build_bzimage(payload=payload))


def test_too_short_for_a_header():
    with pytest.raises(ImageError, match="^file is too short for a bzImage setup header \\(512 bytes, need 620\\)$"):
        parse_bzimage(GOOD[:0x200])
