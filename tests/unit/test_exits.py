"""decode_exit and the run loop's formats on synthetic kvm_run bytes (the layout of kvm.h struct kvm_run,
packed by hand here: the offsets below are the header's, not derived from pvhboot.abi)."""
import ctypes
import struct

import pytest

from pvhboot.abi import kvm as abi
from pvhboot.kvm.exits import (
    EXIT_IO,
    EXIT_MMIO,
    IO_VALUE,
    MMIO_DATA,
    MMIO_DATA_LEN,
    FailEntryExit,
    InternalErrorExit,
    IoExit,
    MmioExit,
    SimpleExit,
    SystemEventExit,
    UnknownExit,
    decode_exit,
    exit_reason,
    field,
    layout_struct,
)

RUN_SIZE = 2352


def run_page(reason: int, union: bytes = b"") -> bytearray:
    page = bytearray(8192)  # the io data lives after kvm_run, at data_offset (4096 here, as KVM puts it)
    struct.pack_into("<I", page, 8, reason)
    page[32:32 + len(union)] = union
    return page


def test_io_out():
    page = run_page(2, struct.pack("<BBHIQ", 1, 1, 0x3F8, 1, 0x1000))
    page[0x1000] = 0x41
    reason, rec = decode_exit(page)
    assert reason == abi.KvmExit.IO
    assert rec == IoExit(direction=1, size=1, port=0x3F8, count=1, data_offset=0x1000)
    assert rec.is_write
    assert page[rec.data_offset] == 0x41


def test_io_in_rep():
    page = run_page(2, struct.pack("<BBHIQ", 0, 2, 0x1F0, 4, 0x1000))
    _, rec = decode_exit(memoryview(page))
    assert (rec.direction, rec.size, rec.port, rec.count) == (0, 2, 0x1F0, 4)
    assert not rec.is_write


def test_mmio_write():
    page = run_page(6, struct.pack("<Q8sIB", 0xD0000000, b"\x7b" + b"\0" * 7, 1, 1))
    _, rec = decode_exit(bytes(page))
    assert rec == MmioExit(0xD0000000, b"\x7b" + b"\0" * 7, 1, True)


def test_internal_error_emulation_bytes():
    # data[0] = 1 (insn bytes valid); data[1] low byte = length 3, then 0f 01 d9 (vmmcall)
    insn = bytes([3, 0x0F, 0x01, 0xD9]) + b"\0" * 4
    data = [1, int.from_bytes(insn, "little")] + [0] * 14
    page = run_page(17, struct.pack("<II16Q", 1, 4, *data))
    reason, rec = decode_exit(page)
    assert reason == abi.KvmExit.INTERNAL_ERROR
    assert isinstance(rec, InternalErrorExit)
    assert rec.suberror_name == "EMULATION"
    assert rec.ndata == 4
    assert rec.instruction_bytes == bytes([0x0F, 0x01, 0xD9])


def test_internal_error_without_bytes():
    page = run_page(17, struct.pack("<II16Q", 2, 0, *([0] * 16)))
    _, rec = decode_exit(page)
    assert rec.suberror_name == "SIMUL_EX"
    assert rec.instruction_bytes is None


def test_fail_entry_system_event_unknown():
    _, rec = decode_exit(run_page(9, struct.pack("<QI", 0x80000021, 1)))
    assert rec == FailEntryExit(0x80000021, 1)
    _, rec = decode_exit(run_page(24, struct.pack("<II16Q", 2, 1, *([0] * 16))))
    assert isinstance(rec, SystemEventExit) and rec.type_name == "RESET"
    _, rec = decode_exit(run_page(0, struct.pack("<Q", 0x1234)))
    assert rec == UnknownExit(0, 0x1234)


def test_simple_exits():
    for reason, name in ((5, "HLT"), (8, "SHUTDOWN"), (10, "INTR")):
        r, rec = decode_exit(run_page(reason))
        assert r == reason and rec == SimpleExit(reason) and rec.name == name
    _, rec = decode_exit(run_page(999))
    assert rec.name == "exit 999"


def test_hot_path_formats_read_the_header_offsets():
    """The run loop's one-unpack decode: exit_reason at 8, the io member at 32 (kvm.h)."""
    page = run_page(2, struct.pack("<BBHIQ", 0, 4, 0xCF8, 3, 0x1000))
    assert EXIT_IO.unpack_from(page) == (2, 0, 4, 0xCF8, 3, 0x1000)
    assert EXIT_IO.format == "<8xI20xBBHIQ"
    assert exit_reason(page) == 2
    page = run_page(6, struct.pack("<Q8sIB", 0xFEE00020, b"\1\2\3\4" + b"\0" * 4, 4, 0))
    assert EXIT_MMIO.unpack_from(page) == (0xFEE00020, b"\1\2\3\4" + b"\0" * 4, 4, 0)
    MMIO_DATA.pack_into(page, 0, (0x11223344).to_bytes(MMIO_DATA_LEN, "little"))
    assert page[40:48] == bytes([0x44, 0x33, 0x22, 0x11, 0, 0, 0, 0])  # kvm_run.mmio.data
    assert [IO_VALUE[n].size for n in (1, 2, 4, 8)] == [1, 2, 4, 8]


def test_layout_struct_pads_and_refuses_overlap():
    class S(ctypes.Structure):
        _fields_ = [("a", ctypes.c_uint8), ("b", ctypes.c_uint32), ("c", ctypes.c_uint8 * 3),
                    ("d", ctypes.c_uint64 * 2)]

    assert layout_struct(field(S, "b"), field(S, "d")).format == "<4xI8x2Q"
    assert layout_struct(field(S, "a"), field(S, "c", 0)).format == "<B7x3s"
    with pytest.raises(ValueError, match="overlaps"):
        layout_struct(field(S, "b"), field(S, "a"))
