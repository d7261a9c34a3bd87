"""ELF vmlinux parsing: segments, entries, Xen notes of every encoding, build-id, version, errors."""
import struct

import imagekit
import pytest

from pvhboot.abi.xen_notes import XEN_ELFNOTE, XenNoteFormat, decode_xen_note, xen_note_format, xen_note_name
from pvhboot.errors import BootError, ImageError
from pvhboot.image import entries_of, load_kernel, parse_elf
from pvhboot.image.elf import physical_entry


def test_xen_elfnote_numbers_match_elfnote_h():
    # xen/include/public/elfnote.h
    assert XEN_ELFNOTE.INFO == 0 and XEN_ELFNOTE.ENTRY == 1 and XEN_ELFNOTE.FEATURES == 10
    assert XEN_ELFNOTE.SUPPORTED_FEATURES == 17 and XEN_ELFNOTE.PHYS32_ENTRY == 18
    assert XEN_ELFNOTE.PHYS32_RELOC == 19
    assert xen_note_name(18) == "PHYS32_ENTRY" and xen_note_name(99) == "UNKNOWN_99"
    assert xen_note_format(99) is XenNoteFormat.RAW


@pytest.mark.parametrize("ntype,desc,value", [
    (18, struct.pack("<I", 0x1000850), 0x1000850),
    (18, struct.pack("<Q", 0x1000850), 0x1000850),
    (1, struct.pack("<Q", 0xFFFFFFFF8304E1C0), 0xFFFFFFFF8304E1C0),
    (18, b"\x01\x02\x03", b"\x01\x02\x03"),  # a numeric of 3 bytes is not guessed at
    (6, b"linux\0", "linux"),
    (10, b"!writable_page_tables", "!writable_page_tables"),  # Linux emits FEATURES without NUL
    (6, b"li\xffnux\0", b"li\xffnux\0"),
    (19, struct.pack("<I", 0x200000), (0x200000,)),
    (19, struct.pack("<II", 0x200000, 0x1000000), (0x200000, 0x1000000)),
    (19, struct.pack("<III", 0x200000, 0x1000000, 0x3FFFFFFF), (0x200000, 0x1000000, 0x3FFFFFFF)),
    (19, b"\0" * 16, b"\0" * 16),
    (13, struct.pack("<QQ", 1, 1), (1, 1)),
    (99, b"\x01\x02", b"\x01\x02"),
])
def test_decode_xen_note(ntype, desc, value):
    assert decode_xen_note(ntype, desc) == value


def test_elf64_facts():
    img = parse_elf(imagekit.build_elf())
    assert (img.elf_class, img.machine, img.e_entry) == (64, "EM_X86_64", 0x1000000)
    assert [(s.paddr, s.vaddr, s.offset, s.memsz > s.filesz) for s in img.segments] == [
        (0x1000000, 0xFFFFFFFF81000000, 0x1000, False), (0x1100000, 0xFFFFFFFF81100000, 0x2000, True)]
    notes = {n.name: n.value for n in img.xen_notes}
    assert notes == {
        "GUEST_OS": "linux", "FEATURES": "!writable_page_tables", "VIRT_BASE": 0xFFFFFFFF80000000,
        "ENTRY": 0xFFFFFFFF81000040, "SUPPORTED_FEATURES": 0x8801, "L1_MFN_VALID": (1, 1),
        "PHYS32_RELOC": (0x200000, 0x1000000, 0x3FFFFFFF), "PHYS32_ENTRY": 0x1000010,
    }
    assert img.note(XEN_ELFNOTE.PHYS32_ENTRY).desc == struct.pack("<I", 0x1000010)
    assert img.build_id == imagekit.DEFAULT_BUILD_ID.hex()
    assert img.linux_version == imagekit.BANNER.decode().rstrip("\n")
    e = entries_of(img, None)
    assert (e.pvh, e.linux32, e.linux64, e.xen_pv) == (0x1000010, None, 0x1000000, 0xFFFFFFFF81000040)


def test_elf32_facts():
    img = parse_elf(imagekit.build_elf(elf_class=32, vaddr=0xC1000000,
                                       notes=[("Xen", 18, struct.pack("<I", 0x1000020))]))
    assert (img.elf_class, img.machine) == (32, "EM_386")
    assert [(s.paddr, s.vaddr) for s in img.segments] == [(0x1000000, 0xC1000000), (0x1100000, 0xC1100000)]
    e = entries_of(img, None)
    assert (e.pvh, e.linux32, e.linux64, e.xen_pv) == (0x1000020, None, None, None)


def test_no_banner_no_notes():
    img = parse_elf(imagekit.build_elf(banner=None, notes=[]))
    assert img.linux_version is None and img.xen_notes == () and img.build_id is None


def test_virtual_entry_is_translated_through_its_segment():
    img = parse_elf(imagekit.build_elf(entry=0xFFFFFFFF81000123))
    assert physical_entry(img) == 0x1000123


def test_entry_outside_every_segment_has_no_linux64(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(imagekit.build_elf(entry=0x5000))
    k = load_kernel(path)
    assert k.entries.linux64 is None
    with pytest.raises(BootError, match="ELF entry 0x5000 is not inside any PT_LOAD segment"):
        k.require_entry("linux64")


def test_require_entry_hints(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(imagekit.build_elf(notes=[("Xen", 6, b"linux\0")]))
    k = load_kernel(path)
    assert k.require_entry("linux64") == 0x1000000
    with pytest.raises(BootError) as e:
        k.require_entry("pvh")
    msg = str(e.value)
    assert "XEN_ELFNOTE_PHYS32_ENTRY" in msg and "CONFIG_PVH=y" in msg and "--protocol linux64" in msg
    with pytest.raises(BootError, match="needs a bzImage"):
        k.require_entry("linux32")
    with pytest.raises(BootError, match="unknown boot protocol 'pvh2'"):
        k.require_entry("pvh2")


# ---- corrupt one field, get one exact error ------------------------------------------------------

def test_truncated_elf_header():
    with pytest.raises(ImageError, match="^truncated ELF header: file has 40 bytes, the 64-bit header needs 64$"):
        parse_elf(imagekit.build_elf()[:40])
    with pytest.raises(ImageError, match="^truncated ELF header: file has 51 bytes, the 32-bit header needs 52$"):
        parse_elf(imagekit.build_elf(elf_class=32, vaddr=0xC1000000)[:51])


def test_bad_elf_class():
    elf = bytearray(imagekit.build_elf())
    elf[4] = 3
    with pytest.raises(ImageError, match="^ELF class byte EI_CLASS is 3, expected 1 \\(32-bit\\) or 2 \\(64-bit\\)$"):
        parse_elf(bytes(elf))


def test_not_elf():
    with pytest.raises(ImageError, match="^not an ELF file \\(starts with 7f 45 4c 00\\)$"):
        parse_elf(b"\x7fEL\0" + b"\0" * 60)


def test_load_segment_past_eof():
    elf = bytearray(imagekit.build_elf())
    struct.pack_into("<Q", elf, 64 + 32, 0x10000000)  # first phdr's p_filesz
    with pytest.raises(ImageError,
                       match=r"^PT_LOAD segment 0 \(file bytes 0x1000\+0x10000000\) runs past the end of the file"):
        parse_elf(bytes(elf))


def test_filesz_bigger_than_memsz():
    elf = bytearray(imagekit.build_elf())
    struct.pack_into("<Q", elf, 64 + 40, 0x10)  # first phdr's p_memsz
    with pytest.raises(ImageError, match=r"^PT_LOAD segment 0 has p_filesz 0x344 > p_memsz 0x10$"):
        parse_elf(bytes(elf))


def test_program_headers_past_eof():
    elf = bytearray(imagekit.build_elf())
    struct.pack_into("<Q", elf, 32, len(elf) - 8)  # e_phoff
    with pytest.raises(ImageError,
                       match=r"^program header table \(3 x 56 bytes at 0x[0-9a-f]+\) runs past the end of the file"):
        parse_elf(bytes(elf))


def test_note_descsz_past_segment():
    blob = imagekit.build_elf(notes=[("Xen", 18, struct.pack("<I", 1))])
    elf = bytearray(blob)
    at = blob.index(b"Xen\0") - 12
    struct.pack_into("<I", elf, at + 4, 0x1000)  # descsz
    with pytest.raises(ImageError, match="runs past the end of its PT_NOTE segment"):
        parse_elf(bytes(elf))


def test_load_kernel_names_the_file(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"MZ" + b"\0" * 1000)
    with pytest.raises(ImageError, match=f"^{path}: neither an ELF vmlinux .*first bytes 4d 5a 00 00.* nor a bzImage"):
        load_kernel(path)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="file is empty"):
        load_kernel(empty)
    with pytest.raises(ImageError, match="cannot read kernel .*No such file"):
        load_kernel(tmp_path / "missing")
    with pytest.raises(ImageError, match="a directory, not a regular file"):
        load_kernel(tmp_path)


def test_note_name_without_nul():
    # Found by fuzzing: pyelftools' construct raises ArrayError for an unterminated note name.
    elf = bytearray(imagekit.build_elf(notes=[("Xen", 18, struct.pack("<I", 1))]))
    elf[elf.index(b"Xen\0") + 3] = ord("X")
    with pytest.raises(ImageError, match="^malformed ELF: ArrayError: .*missing terminator"):
        parse_elf(bytes(elf))
