"""decode_exit on synthetic kvm_run bytes (the layout of kvm.h struct kvm_run, packed by hand)."""
import struct

from pvhboot.abi import kvm as abi
from pvhboot.kvm.exits import (
    FailEntryExit,
    InternalErrorExit,
    IoExit,
    MmioExit,
    SimpleExit,
    SystemEventExit,
    UnknownExit,
    decode_exit,
    io_data,
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
    assert io_data(page, rec) == b"A"


def test_io_in_rep():
    page = run_page(2, struct.pack("<BBHIQ", 0, 2, 0x1F0, 4, 0x1000))
    _, rec = decode_exit(memoryview(page))
    assert (rec.direction, rec.size, rec.port, rec.count) == (0, 2, 0x1F0, 4)
    assert not rec.is_write
    assert len(io_data(page, rec)) == 8


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
