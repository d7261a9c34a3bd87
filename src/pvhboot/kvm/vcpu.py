"""A KVM vCPU fd (api.rst "vcpu ioctls") and its shared kvm_run page.

The kvm_run page is read through a memoryview with ``struct.unpack_from`` (no ctypes view keeps an
export on the mapping, so closing never fails).  ``run`` is a C-level partial of ``fcntl.ioctl`` so the
run loop's hot path costs one C call: it releases the GIL while the vCPU runs.
"""
from __future__ import annotations

import ctypes
import fcntl
import functools
import mmap
import os
import threading

from ..abi import kvm as abi
from ..errors import KvmError
from .exits import field, layout_struct

_ioctl = fcntl.ioctl
_IMMEDIATE_EXIT = abi.kvm_run.immediate_exit.offset
# The coalesced ring's page in a vCPU's mapping (asm/kvm.h, x86: page 2).
_RING_PAGE = abi.KVM_COALESCED_MMIO_PAGE_OFFSET * mmap.PAGESIZE
_RING = abi.kvm_coalesced_mmio_ring
_RING_HEAD = layout_struct(field(_RING, "first"), field(_RING, "last"))
_RING_FIRST = layout_struct(field(_RING, "first"))  # user space owns ``first`` (kvm.h)
_RING_ENTRY = layout_struct(*(field(abi.kvm_coalesced_mmio, n) for n in ("phys_addr", "len", "pio", "data")))
_RING_ENTRIES = ctypes.sizeof(_RING)  # kvm_coalesced_mmio coalesced_mmio[] follows the header
# The run loop peeks at {first, last} as two u32s: a memoryview cast needs them adjacent, in this order.
assert field(_RING, "last")[0] == field(_RING, "first")[0] + 4 and _RING_HEAD.format == "<II"


class CoalescedRing:
    """The coalesced MMIO/PIO ring (one per VM, page KVM_COALESCED_MMIO_PAGE_OFFSET of every vCPU map)."""

    def __init__(self, view: memoryview, offset: int):
        self._view = view
        self._off = offset
        self._max = abi.kvm_coalesced_mmio_max(mmap.PAGESIZE)
        self._lock = threading.Lock()  # one ring per VM, drained from every vCPU thread

    def pending(self) -> bool:
        """True when entries are queued (a lock-free peek at ``first`` != ``last``)."""
        first, last = _RING_HEAD.unpack_from(self._view, self._off)
        return first != last

    def drain(self) -> list[tuple[int, int, bool, bytes]]:
        """Entries (addr, len, pio, data) queued since the last drain, oldest first; consumes them."""
        v, off = self._view, self._off
        out = []
        with self._lock:
            first, last = _RING_HEAD.unpack_from(v, off)
            while first != last:
                addr, length, pio, data = _RING_ENTRY.unpack_from(v, off + _RING_ENTRIES + first * _RING_ENTRY.size)
                out.append((addr, length, bool(pio), data[:length]))
                first = (first + 1) % self._max
            _RING_FIRST.pack_into(v, off, first)
        return out


class Vcpu:
    """Created by :meth:`pvhboot.kvm.Vm.create_vcpu`; closed with its VM."""

    def __init__(self, vm, index: int, fd: int, mmap_size: int):
        self.vm = vm
        self.index = index
        self.fd = fd
        try:
            self._map = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            raise KvmError(f"vCPU {index}: cannot map its kvm_run page ({mmap_size} bytes): {e.strerror}") from None
        self.run_view = memoryview(self._map)
        # KVM_RUN: returns 0 after an exit to user space; OSError(EINTR) when a signal or immediate_exit
        # stopped it; OSError(EAGAIN) for an AP woken by INIT (platform.md).  Any other OSError is a
        # failure: the caller raises :meth:`run_failed` of it (kept out of the partial: the hot path).
        self.run = functools.partial(_ioctl, fd, abi.KVM_RUN, 0)

    def close(self) -> None:
        if self.fd < 0:
            return
        self.run = None
        self.run_view.release()
        try:
            self._map.close()
        except BufferError:  # someone still holds a view of kvm_run; the mapping goes when it is collected
            pass
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> Vcpu:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- helpers ---
    def _call(self, name: str, req: int, buf) -> int:
        try:
            return _ioctl(self.fd, req, buf, True)
        except OSError as e:
            raise KvmError(f"vCPU {self.index}: {name} failed: {e.strerror} (errno {e.errno})") from None

    def run_failed(self, e: OSError) -> KvmError:
        """The error to raise for a KVM_RUN that failed with ``e`` (not EINTR/EAGAIN, which are kicks)."""
        return KvmError(f"vCPU {self.index}: KVM_RUN failed: {e.strerror} (errno {e.errno})")

    def set_immediate_exit(self, value: bool) -> None:
        """kvm_run.immediate_exit: KVM_RUN returns EINTR at once while it is set (api.rst)."""
        self.run_view[_IMMEDIATE_EXIT] = 1 if value else 0

    def coalesced_ring(self) -> CoalescedRing | None:
        """The VM's coalesced ring through this vCPU's mapping (None when KVM maps no ring page)."""
        if len(self.run_view) < _RING_PAGE + mmap.PAGESIZE:
            return None
        return CoalescedRing(self.run_view, _RING_PAGE)

    def coalesced_ring_head(self) -> memoryview | None:
        """The ring's {first, last} as a two-u32 view through this vCPU's own mapping: the run loop's
        per-exit peek (``head[0] != head[1]``: writes are queued) costs ~0.05 us, a method call ~0.3 us
        (bench 1).  The caller releases it before the vCPU is closed."""
        if len(self.run_view) < _RING_PAGE + mmap.PAGESIZE:
            return None
        return self.run_view[_RING_PAGE:_RING_PAGE + _RING_HEAD.size].cast("I")

    # --- register state ---
    def get_regs(self) -> abi.kvm_regs:
        regs = abi.kvm_regs()
        self._call("KVM_GET_REGS", abi.KVM_GET_REGS, regs)
        return regs

    def set_regs(self, regs: abi.kvm_regs) -> None:
        self._call("KVM_SET_REGS", abi.KVM_SET_REGS, regs)

    def get_sregs(self) -> abi.kvm_sregs:
        sregs = abi.kvm_sregs()
        self._call("KVM_GET_SREGS", abi.KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: abi.kvm_sregs) -> None:
        self._call("KVM_SET_SREGS", abi.KVM_SET_SREGS, sregs)

    def get_fpu(self) -> abi.kvm_fpu:
        """KVM_GET_FPU: x87/SSE state (the gdb stub's st0-7, xmm0-15, mxcsr)."""
        fpu = abi.kvm_fpu()
        self._call("KVM_GET_FPU", abi.KVM_GET_FPU, fpu)
        return fpu

    def set_fpu(self, fpu: abi.kvm_fpu) -> None:
        self._call("KVM_SET_FPU", abi.KVM_SET_FPU, fpu)

    def translate(self, linear: int) -> int | None:
        """KVM_TRANSLATE: the guest-physical address of ``linear`` under the current paging, or None."""
        t = abi.kvm_translation(linear_address=linear)
        self._call("KVM_TRANSLATE", abi.KVM_TRANSLATE, t)
        return t.physical_address if t.valid else None

    def set_guest_debug(self, control: int, debugreg: tuple[int, ...] = ()) -> None:
        """KVM_SET_GUEST_DEBUG (api.rst): ``control`` is KVM_GUESTDBG_* bits; ``debugreg`` DR0-DR3,
        (DR4, DR5 unused,) DR6, DR7 for KVM_GUESTDBG_USE_HW_BP.  From this vCPU's thread, outside KVM_RUN."""
        dbg = abi.kvm_guest_debug(control=control)
        for i, value in enumerate(debugreg[:8]):
            dbg.arch.debugreg[i] = value
        self._call("KVM_SET_GUEST_DEBUG", abi.KVM_SET_GUEST_DEBUG, dbg)

    def clear_pending_exception(self) -> bool:
        """KVM_GET/SET_VCPU_EVENTS: drop the exception KVM has queued for the next entry (the #UD of an
        emulation failure that the VMM handled itself).  True when there was one."""
        events = abi.kvm_vcpu_events()
        self._call("KVM_GET_VCPU_EVENTS", abi.KVM_GET_VCPU_EVENTS, events)
        if not (events.exception.injected or events.exception.pending):
            return False
        events.exception.injected = events.exception.pending = 0
        events.exception_has_payload = 0
        self._call("KVM_SET_VCPU_EVENTS", abi.KVM_SET_VCPU_EVENTS, events)
        return True

    # --- MSRs ---
    def set_msrs(self, msrs: dict[int, int]) -> None:
        """KVM_SET_MSRS; every MSR must be accepted (the ioctl returns how many were set)."""
        items = list(msrs.items())
        buf = abi.kvm_msrs_with(len(items))()
        buf.nmsrs = len(items)
        for i, (index, value) in enumerate(items):
            buf.entries[i].index = index
            buf.entries[i].data = value
        n = self._call("KVM_SET_MSRS", abi.KVM_SET_MSRS, buf)
        if n != len(items):
            raise KvmError(f"vCPU {self.index}: KVM_SET_MSRS refused MSR {items[n][0]:#x} "
                           f"(value {items[n][1]:#x}); {n} of {len(items)} set")

    # --- CPUID ---
    def set_cpuid2(self, entries: list[abi.kvm_cpuid_entry2]) -> None:
        buf = abi.kvm_cpuid2_with(len(entries))()
        buf.nent = len(entries)
        for i, e in enumerate(entries):
            buf.entries[i] = e
        # > 1024 bytes for any real table: a mutable buffer passed in place (platform.md).
        self._call("KVM_SET_CPUID2", abi.KVM_SET_CPUID2, buf)
