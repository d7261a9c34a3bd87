"""Decode the kvm_run page (kvm.h struct kvm_run and its exit union) and its neighbours.

Every format here is built by :func:`layout_struct` from the ctypes declarations in
:mod:`pvhboot.abi.kvm` (field offsets and types), never from offsets typed by hand, and each
:class:`struct.Struct` reads from offset 0 of the kvm_run page (leading pad bytes skip to the field).

Two users: the run loop's hot path binds :data:`EXIT_IO` / :data:`EXIT_MMIO` / :data:`MMIO_DATA` /
:data:`IO_VALUE` once and unpacks with them (one C call per exit, no record object); rare exits go
through :func:`decode_exit`, a free function over bytes (tests feed it synthetic kvm_run contents),
which returns a small record.  The record classes (IoExit, MmioExit, ...) live in
:mod:`pvhboot.kvm._exit_records`, created on first use and read through this module.
"""
from __future__ import annotations

import ctypes
import struct
from typing import TYPE_CHECKING

from ..abi import kvm as abi

if TYPE_CHECKING:
    from ._exit_records import ExitRecord

_SCALAR_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}  # unsigned little-endian, by size


def _code(ctype) -> str:
    """The struct code of a ctypes field type: an unsigned integer, a u8 array as bytes, else an
    array of integers."""
    if issubclass(ctype, ctypes.Array):
        elem = ctype._type_
        if ctypes.sizeof(elem) == 1:
            return f"{ctype._length_}s"
        return f"{ctype._length_}{_SCALAR_CODES[ctypes.sizeof(elem)]}"
    return _SCALAR_CODES[ctypes.sizeof(ctype)]


def field(cls, name: str, base: int = 0) -> tuple[int, type]:
    """(offset, ctypes type) of ``cls.name``, ``base`` added (the offset of ``cls`` in its container)."""
    return base + getattr(cls, name).offset, dict(cls._fields_)[name]


def layout_struct(*fields: tuple[int, type]) -> struct.Struct:
    """A little-endian Struct reading ``fields`` ((offset, ctypes type), ascending) from offset 0,
    with pad bytes before and between them."""
    fmt, at = "<", 0
    for offset, ctype in fields:
        if offset < at:
            raise ValueError(f"field at {offset} overlaps the previous one (ends at {at})")
        if offset > at:
            fmt += f"{offset - at}x"
        fmt += _code(ctype)
        at = offset + ctypes.sizeof(ctype)
    return struct.Struct(fmt)


_U = abi.kvm_run.u.offset


def _union(cls, *names: str) -> struct.Struct:
    """Fields of the exit-union member ``cls``, read from the start of kvm_run."""
    return layout_struct(*(field(cls, n, _U) for n in names))


EXIT_REASON = layout_struct(field(abi.kvm_run, "exit_reason"))
_IO_FIELDS = ("direction", "size", "port", "count", "data_offset")
# The run loop's hot path: exit_reason and the whole io member in one unpack (<8xI20xBBHIQ).
EXIT_IO = layout_struct(field(abi.kvm_run, "exit_reason"), *(field(abi.kvm_run_io, n, _U) for n in _IO_FIELDS))
EXIT_MMIO = _union(abi.kvm_run_mmio, "phys_addr", "data", "len", "is_write")
MMIO_DATA = _union(abi.kvm_run_mmio, "data")  # an MMIO read's answer, written back before the next KVM_RUN
MMIO_DATA_LEN = abi.kvm_run_mmio.data.size  # u8 data[8]
# Port I/O data: ``count`` items of ``size`` bytes at kvm_run.io.data_offset (api.rst KVM_EXIT_IO).
IO_VALUE = {n: struct.Struct("<" + code) for n, code in _SCALAR_CODES.items()}
_INTERNAL = _union(abi.kvm_run_internal, "suberror", "ndata", "data")
_FAIL = _union(abi.kvm_run_fail_entry, "hardware_entry_failure_reason", "cpu")
_SYSEV = _union(abi.kvm_run_system_event, "type", "ndata", "data")  # data[0] is ``flags`` in older headers
_EX = _union(abi.kvm_run_ex, "exception", "error_code")
_HW = _union(abi.kvm_run_hw, "hardware_exit_reason")
_MAX_DATA = abi.kvm_run_internal.data.size // 8  # u64 data[16]

_RECORD_NAMES = ("IoExit", "MmioExit", "InternalErrorExit", "FailEntryExit", "SystemEventExit",
                 "ExceptionExit", "SimpleExit", "UnknownExit", "ExitRecord")


def __getattr__(name: str):
    """The record classes live in :mod:`pvhboot.kvm._exit_records`, created on first use (PEP 562)."""
    if name in _RECORD_NAMES:
        from . import _exit_records

        return getattr(_exit_records, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def exit_reason(run: bytes | bytearray | memoryview) -> int:
    return EXIT_REASON.unpack_from(run)[0]


def decode_exit(run: bytes | bytearray | memoryview) -> tuple[int, ExitRecord]:
    """(exit_reason, record) for the kvm_run contents ``run`` (at least the 304-byte header+union)."""
    from ._exit_records import (
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
        return reason, IoExit(*EXIT_IO.unpack_from(run)[1:])
    if reason == K.MMIO:
        addr, data, length, is_write = EXIT_MMIO.unpack_from(run)
        return reason, MmioExit(addr, data, length, bool(is_write))
    if reason == K.INTERNAL_ERROR:
        sub, ndata, *data = _INTERNAL.unpack_from(run)
        return reason, InternalErrorExit(sub, min(ndata, _MAX_DATA), tuple(data))
    if reason == K.FAIL_ENTRY:
        return reason, FailEntryExit(*_FAIL.unpack_from(run))
    if reason == K.SYSTEM_EVENT:
        typ, ndata, *data = _SYSEV.unpack_from(run)
        return reason, SystemEventExit(typ, min(ndata, _MAX_DATA), tuple(data))
    if reason == K.EXCEPTION:
        return reason, ExceptionExit(*_EX.unpack_from(run))
    if reason == K.UNKNOWN:
        return reason, UnknownExit(reason, _HW.unpack_from(run)[0])
    return reason, SimpleExit(reason)
