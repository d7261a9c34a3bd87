"""A KVM vCPU fd (api.rst "vcpu ioctls") and its shared kvm_run page.

The kvm_run page is read through a memoryview with ``struct.unpack_from`` (no ctypes view keeps an
export on the mapping, so closing never fails).  ``run`` is a C-level partial of ``fcntl.ioctl`` so the
run loop's hot path costs one C call: it releases the GIL while the vCPU runs.
"""
from __future__ import annotations

import fcntl
import functools
import mmap
import os
import struct
import threading

from ..abi import kvm as abi
from ..errors import KvmError

_ioctl = fcntl.ioctl
_RING_HEAD = struct.Struct("<II")  # kvm_coalesced_mmio_ring {first, last}
_RING_ENTRY = struct.Struct("<QII8s")  # kvm_coalesced_mmio {phys_addr, len, pio, data[8]}


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
                addr, length, pio, data = _RING_ENTRY.unpack_from(v, off + 8 + first * _RING_ENTRY.size)
                out.append((addr, length, bool(pio), data[:length]))
                first = (first + 1) % self._max
            struct.pack_into("<I", v, off, first)  # user space owns ``first`` (kvm.h)
        return out


class Vcpu:
    """Created by :meth:`pvhboot.kvm.Vm.create_vcpu`; closed with its VM."""

    def __init__(self, vm, index: int, fd: int, mmap_size: int):
        self.vm = vm
        self.index = index
        self.fd = fd
        self._map = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.run_view = memoryview(self._map)
        # KVM_RUN: returns 0 after an exit to user space; OSError(EINTR) when a signal or immediate_exit
        # stopped it; OSError(EAGAIN) for an AP woken by INIT (platform.md).
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
    def _call(self, name: str, req: int, buf) -> None:
        try:
            _ioctl(self.fd, req, buf, True)
        except OSError as e:
            raise KvmError(f"vCPU {self.index}: {name} failed: {e.strerror} (errno {e.errno})") from None

    @property
    def immediate_exit(self) -> bool:
        return bool(self.run_view[abi.KVM_RUN_IMMEDIATE_EXIT])

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        self.run_view[abi.KVM_RUN_IMMEDIATE_EXIT] = 1 if value else 0

    def coalesced_ring(self) -> CoalescedRing | None:
        off = abi.KVM_COALESCED_MMIO_PAGE_OFFSET * mmap.PAGESIZE
        if len(self.run_view) < off + mmap.PAGESIZE:
            return None
        return CoalescedRing(self.run_view, off)

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
        fpu = abi.kvm_fpu()
        self._call("KVM_GET_FPU", abi.KVM_GET_FPU, fpu)
        return fpu

    def set_fpu(self, fpu: abi.kvm_fpu) -> None:
        self._call("KVM_SET_FPU", abi.KVM_SET_FPU, fpu)

    def get_mp_state(self) -> abi.MpState:
        st = abi.kvm_mp_state()
        self._call("KVM_GET_MP_STATE", abi.KVM_GET_MP_STATE, st)
        return abi.MpState(st.mp_state)

    def set_mp_state(self, state: int) -> None:
        self._call("KVM_SET_MP_STATE", abi.KVM_SET_MP_STATE, abi.kvm_mp_state(int(state)))

    def translate(self, linear: int) -> int | None:
        """KVM_TRANSLATE: the guest-physical address of ``linear`` under the current paging, or None."""
        t = abi.kvm_translation(linear_address=linear)
        try:
            _ioctl(self.fd, abi.KVM_TRANSLATE, t, True)
        except OSError:
            return None
        return t.physical_address if t.valid else None

    def set_guest_debug(self, control: int, debugreg: tuple[int, ...] = ()) -> None:
        """KVM_SET_GUEST_DEBUG (api.rst): ``control`` is KVM_GUESTDBG_* bits; ``debugreg`` DR0-DR3,
        (DR4, DR5 unused,) DR6, DR7 for KVM_GUESTDBG_USE_HW_BP.  From this vCPU's thread, outside KVM_RUN."""
        dbg = abi.kvm_guest_debug(control=control)
        for i, value in enumerate(debugreg[:8]):
            dbg.arch.debugreg[i] = value
        self._call("KVM_SET_GUEST_DEBUG", abi.KVM_SET_GUEST_DEBUG, dbg)

    # --- MSRs ---
    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        """KVM_GET_MSRS: {index: value} for the MSRs KVM could read (it stops at the first failure)."""
        buf = abi.kvm_msrs_with(len(indices))()
        buf.nmsrs = len(indices)
        for i, index in enumerate(indices):
            buf.entries[i].index = index
        try:
            n = _ioctl(self.fd, abi.KVM_GET_MSRS, buf, True)
        except OSError as e:
            raise KvmError(f"vCPU {self.index}: KVM_GET_MSRS failed: {e.strerror}") from None
        return {buf.entries[i].index: buf.entries[i].data for i in range(n)}

    def set_msrs(self, msrs: dict[int, int]) -> None:
        """KVM_SET_MSRS; every MSR must be accepted (the ioctl returns how many were set)."""
        items = list(msrs.items())
        buf = abi.kvm_msrs_with(len(items))()
        buf.nmsrs = len(items)
        for i, (index, value) in enumerate(items):
            buf.entries[i].index = index
            buf.entries[i].data = value
        try:
            n = _ioctl(self.fd, abi.KVM_SET_MSRS, buf, True)
        except OSError as e:
            raise KvmError(f"vCPU {self.index}: KVM_SET_MSRS failed: {e.strerror}") from None
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

    def get_cpuid2(self, max_entries: int = 256) -> list[abi.kvm_cpuid_entry2]:
        buf = abi.kvm_cpuid2_with(max_entries)()
        buf.nent = max_entries
        self._call("KVM_GET_CPUID2", abi.KVM_GET_CPUID2, buf)
        return [abi.kvm_cpuid_entry2.from_buffer_copy(buf.entries[i]) for i in range(buf.nent)]
