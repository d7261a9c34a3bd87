"""The exit records :func:`pvhboot.kvm.exits.decode_exit` returns (kvm.h struct kvm_run's exit union).

Their own module so that importing the run loop does not create them: eight frozen dataclasses cost
~2.5 ms of start-up (bench 3) and the hot path (port I/O, MMIO) never builds one; they are imported
on the first rare exit or when a name is asked of :mod:`pvhboot.kvm.exits`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..abi import kvm as abi


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
class DebugExit:
    """KVM_EXIT_DEBUG (asm/kvm.h struct kvm_debug_exit_arch): the vector (1 #DB, 3 #BP), the linear
    address of the stopping instruction (CS base + RIP) and DR6/DR7 as KVM saw them."""

    exception: int
    pc: int
    dr6: int
    dr7: int


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


ExitRecord = (IoExit | MmioExit | InternalErrorExit | FailEntryExit | SystemEventExit | ExceptionExit | DebugExit
              | SimpleExit | UnknownExit)
