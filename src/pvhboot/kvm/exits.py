"""Decode a kvm_run page into small records (kvm.h struct kvm_run, the exit union).

:func:`decode_exit` is a free function over bytes, so tests feed it synthetic kvm_run contents.
The run loop's hot path (port I/O) does not use it: it unpacks the same offsets inline.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from ..abi import kvm as abi

_U = abi.KVM_RUN_EXIT_UNION
_IO = struct.Struct("<BBHIQ")  # direction, size, port, count, data_offset
_MMIO = struct.Struct("<Q8sIB")  # phys_addr, data[8], len, is_write
_INTERNAL = struct.Struct("<II16Q")  # suberror, ndata, data[16]
_FAIL = struct.Struct("<QI")  # hardware_entry_failure_reason, cpu
_SYSEV = struct.Struct("<II16Q")  # type, ndata, data[16] (flags == data[0] in older headers)
_EX = struct.Struct("<II")


@dataclass(frozen=True)
class IoExit:
    direction: int  # KVM_EXIT_IO_IN / KVM_EXIT_IO_OUT
    size: int
    port: int
    count: int
    data_offset: int

    @property
    def is_write(self) -> bool:
        return self.direction == abi.KVM_EXIT_IO_OUT


@dataclass(frozen=True)
class MmioExit:
    phys_addr: int
    data: bytes  # all 8 bytes; the first ``len`` matter
    len: int
    is_write: bool


@dataclass(frozen=True)
class InternalErrorExit:
    suberror: int
    ndata: int
    data: tuple[int, ...]

    @property
    def suberror_name(self) -> str:
        try:
            return abi.KvmInternalError(self.suberror).name
        except ValueError:
            return f"suberror {self.suberror}"

    @property
    def instruction_bytes(self) -> bytes | None:
        """For an emulation failure: the bytes of the instruction KVM could not emulate.

        kvm_pvm and x86 KVM report data[0] = flags (1: instruction bytes valid), then the instruction
        length in the low byte of data[1] and up to 15 bytes from the next byte on (platform.md).
        """
        if self.suberror != abi.KvmInternalError.EMULATION or self.ndata < 2:
            return None
        raw = b"".join(d.to_bytes(8, "little") for d in self.data[1:self.ndata])
        n = raw[0]
        if not self.data[0] & 1 or n == 0 or n > 15:
            return None
        return raw[1:1 + n]


@dataclass(frozen=True)
class FailEntryExit:
    hardware_entry_failure_reason: int
    cpu: int


@dataclass(frozen=True)
class SystemEventExit:
    type: int
    ndata: int
    data: tuple[int, ...]

    @property
    def type_name(self) -> str:
        try:
            return abi.KvmSystemEvent(self.type).name
        except ValueError:
            return f"type {self.type}"


@dataclass(frozen=True)
class ExceptionExit:
    exception: int
    error_code: int


@dataclass(frozen=True)
class SimpleExit:
    """An exit with no payload pvhboot reads (HLT, SHUTDOWN, INTR, IRQ_WINDOW_OPEN, ...)."""

    reason: int

    @property
    def name(self) -> str:
        try:
            return abi.KvmExit(self.reason).name
        except ValueError:
            return f"exit {self.reason}"


@dataclass(frozen=True)
class UnknownExit:
    reason: int
    hardware_exit_reason: int


ExitRecord = IoExit | MmioExit | InternalErrorExit | FailEntryExit | SystemEventExit | ExceptionExit | SimpleExit | UnknownExit


def exit_reason(run: bytes | bytearray | memoryview) -> int:
    return struct.unpack_from("<I", run, abi.KVM_RUN_EXIT_REASON)[0]


def decode_exit(run: bytes | bytearray | memoryview) -> tuple[int, ExitRecord]:
    """(exit_reason, record) for the kvm_run contents ``run`` (at least the 304-byte header+union)."""
    reason = exit_reason(run)
    K = abi.KvmExit
    if reason == K.IO:
        return reason, IoExit(*_IO.unpack_from(run, _U))
    if reason == K.MMIO:
        addr, data, length, is_write = _MMIO.unpack_from(run, _U)
        return reason, MmioExit(addr, data, length, bool(is_write))
    if reason == K.INTERNAL_ERROR:
        sub, ndata, *data = _INTERNAL.unpack_from(run, _U)
        return reason, InternalErrorExit(sub, min(ndata, 16), tuple(data))
    if reason == K.FAIL_ENTRY:
        return reason, FailEntryExit(*_FAIL.unpack_from(run, _U))
    if reason == K.SYSTEM_EVENT:
        typ, ndata, *data = _SYSEV.unpack_from(run, _U)
        return reason, SystemEventExit(typ, min(ndata, 16), tuple(data))
    if reason == K.EXCEPTION:
        return reason, ExceptionExit(*_EX.unpack_from(run, _U))
    if reason == K.UNKNOWN:
        return reason, UnknownExit(reason, struct.unpack_from("<Q", run, _U)[0])
    return reason, SimpleExit(reason)


def io_data(run: bytes | bytearray | memoryview, io: IoExit) -> bytes:
    """The bytes an OUT wrote (or the buffer an IN fills): size*count bytes at data_offset."""
    n = io.size * io.count
    return bytes(run[io.data_offset:io.data_offset + n])
