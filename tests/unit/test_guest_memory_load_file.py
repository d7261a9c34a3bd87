"""GuestMemory.load_file: file pages mapped copy-on-write over guest RAM must read exactly like a copy."""
from __future__ import annotations

import mmap
import os

import pytest

from pvhboot.errors import LayoutError
from pvhboot.memory import GuestMemory

PAGE = mmap.PAGESIZE
BASE = 0x100000


@pytest.fixture
def kernel_file(tmp_path):
    data = os.urandom(PAGE * 12 + 123)  # not a whole number of pages
    path = tmp_path / "vmlinux"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    yield path, data, fd
    os.close(fd)


def _fill(mem, gpa, size, byte):
    mem.write(gpa, bytes([byte]) * size)


@pytest.mark.parametrize("gpa_off,file_off,length", [
    (0, 0, PAGE * 12 + 123),            # aligned start, partial last page
    (0x234, 0x234, PAGE * 10 + 7),      # congruent but unaligned: partial first and last pages
    (0, PAGE, PAGE * 4),                # whole pages only
])
def test_mapped_content_equals_copy_and_neighbours_untouched(kernel_file, gpa_off, file_off, length):
    path, data, fd = kernel_file
    with GuestMemory([(BASE, 64 * PAGE)]) as mem:
        _fill(mem, BASE, 64 * PAGE, 0xAA)  # a reused (non-zero) RAM: bytes outside the range must stay
        gpa = BASE + PAGE + gpa_off
        mapped = mem.load_file(gpa, fd, file_off, length)
        assert mapped > 0 and mapped % PAGE == 0
        assert mem.read(gpa, length) == data[file_off:file_off + length]
        assert mem.read(BASE, gpa - BASE) == b"\xaa" * (gpa - BASE)
        end = gpa + length
        assert mem.read(end, BASE + 64 * PAGE - end) == b"\xaa" * (BASE + 64 * PAGE - end)


def test_bss_after_file_bytes_reads_zero_on_fresh_ram(kernel_file):
    path, data, fd = kernel_file
    length = len(data)  # the last file page is partial: its tail (bss) must not come from the file
    with GuestMemory([(BASE, 64 * PAGE)]) as mem:
        assert mem.load_file(BASE, fd, 0, length - 1000) > 0
        assert mem.read(BASE + length - 1000, 8 * PAGE) == bytes(8 * PAGE)


def test_unaligned_offsets_fall_back_to_copy(kernel_file):
    path, data, fd = kernel_file
    with GuestMemory([(BASE, 64 * PAGE)]) as mem:
        assert mem.load_file(BASE + 8, fd, 0, PAGE * 5) == 0  # gpa - offset not a page multiple
        assert mem.read(BASE + 8, PAGE * 5) == data[:PAGE * 5]
        assert mem.load_file(BASE + 16 * PAGE, fd, 100, 50) == 0  # under a page
        assert mem.read(BASE + 16 * PAGE, 50) == data[100:150]


def test_guest_writes_do_not_reach_the_file(kernel_file):
    path, data, fd = kernel_file
    with GuestMemory([(BASE, 64 * PAGE)]) as mem:
        assert mem.load_file(BASE, fd, 0, PAGE * 8) == PAGE * 8
        mem.write(BASE + PAGE * 3 + 5, b"guest was here")
        assert mem.read(BASE + PAGE * 3 + 5, 14) == b"guest was here"
    assert path.read_bytes() == data


def test_range_past_ram_or_file_is_refused(kernel_file):
    path, data, fd = kernel_file
    with GuestMemory([(BASE, 4 * PAGE)]) as mem:
        with pytest.raises(LayoutError, match="not inside guest RAM"):
            mem.load_file(BASE, fd, 0, 5 * PAGE)
        with pytest.raises(LayoutError, match="file ends"):
            mem.load_file(BASE, fd, 11 * PAGE, 3 * PAGE)  # the file has 12 pages + 123 bytes
