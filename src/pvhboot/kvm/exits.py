"""Decode a kvm_run page into small records (kvm.h struct kvm_run, the exit union).

:func:`decode_exit` is a free function over bytes, so tests feed it synthetic kvm_run contents.
The run loop's hot path (port I/O) does not use it: it unpacks the same offsets inline.  The record
classes (IoExit, MmioExit, ...) are defined in :mod:`pvhboot.kvm._exit_records` on first use and
read through this module as before.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..abi import kvm as abi

if TYPE_CHECKING:
    from ._exit_records import ExitRecord

_U = abi.KVM_RUN_EXIT_UNION
_IO = struct.Struct("<BBHIQ")  # direction, size, port, count, data_offset
_MMIO = struct.Struct("<Q8sIB")  # phys_addr, data[8], len, is_write
_INTERNAL = struct.Struct("<II16Q")  # suberror, ndata, data[16]
_FAIL = struct.Struct("<QI")  # hardware_entry_failure_reason, cpu
_SYSEV = struct.Struct("<II16Q")  # type, ndata, data[16] (flags == data[0] in older headers)
_EX = struct.Struct("<II")
_DEBUG = struct.Struct("<I4xQQQ")  # kvm_debug_exit_arch: exception, pad, pc, dr6, dr7


_RECORD_NAMES = ("IoExit", "MmioExit", "InternalErrorExit", "FailEntryExit", "SystemEventExit",
                 "ExceptionExit", "DebugExit", "SimpleExit", "UnknownExit", "ExitRecord")


def __getattr__(name: str):
    """The record classes live in :mod:`pvhboot.kvm._exit_records`, created on first use (PEP 562)."""
    if name in _RECORD_NAMES:
        from . import _exit_records

        return getattr(_exit_records, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def exit_reason(run: bytes | bytearray | memoryview) -> int:
    return struct.unpack_from("<I", run, abi.KVM_RUN_EXIT_REASON)[0]


def decode_exit(run: bytes | bytearray | memoryview) -> tuple[int, ExitRecord]:
    """(exit_reason, record) for the kvm_run contents ``run`` (at least the 304-byte header+union)."""
    from ._exit_records import (
        DebugExit,
        ExceptionExit,
        FailEntryExit,
        InternalErrorExit,
        IoExit,
        MmioExit,
        SimpleExit,
        SystemEventExit,
        UnknownExit,
    )

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
    if reason == K.DEBUG:
        return reason, DebugExit(*_DEBUG.unpack_from(run, _U))
    if reason == K.UNKNOWN:
        return reason, UnknownExit(reason, struct.unpack_from("<Q", run, _U)[0])
    return reason, SimpleExit(reason)


def io_data(run: bytes | bytearray | memoryview, io) -> bytes:
    """The bytes an OUT wrote (or the buffer an IN fills): size*count bytes at data_offset."""
    n = io.size * io.count
    return bytes(run[io.data_offset:io.data_offset + n])
