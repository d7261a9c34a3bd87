"""Apply a boot vCPU state (pvhboot.boot.cpu_state.CpuState, pure data) to a KVM vCPU.

The conversion CpuState -> (kvm_regs, kvm_sregs) is a pure function so tests check it without
/dev/kvm; :func:`setup_boot_vcpu` and :func:`setup_vcpu_common` issue the ioctls.
"""
from __future__ import annotations

from ..abi import kvm as abi
from ..boot.cpu_state import CpuState, DescriptorTable, Segment
from ..kvm.cpuid import build_vcpu_cpuid
from ..kvm.msrs import build_boot_msrs

_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
# SDM Vol. 1 8.1.5 / Firecracker's setup_fpu: x87 control word after FINIT, MXCSR after reset.
FPU_FCW_DEFAULT = 0x37F
MXCSR_DEFAULT = 0x1F80


def build_kvm_segment(seg: Segment) -> abi.kvm_segment:
    return abi.kvm_segment(
        base=seg.base, limit=seg.limit, selector=seg.selector, type=seg.type, present=seg.present,
        dpl=seg.dpl, db=seg.db, s=seg.s, l=seg.l, g=seg.g, avl=seg.avl, unusable=seg.unusable,
    )


def segment_from_kvm(k: abi.kvm_segment) -> Segment:
    return Segment(selector=k.selector, base=k.base, limit=k.limit, type=k.type, present=k.present,
                   dpl=k.dpl, db=k.db, s=k.s, l=k.l, g=k.g, avl=k.avl, unusable=k.unusable)


def build_kvm_regs(state: CpuState) -> abi.kvm_regs:
    regs = abi.kvm_regs()
    for name, value in state.gprs.items():
        if name not in _GPRS:
            raise ValueError(f"unknown general-purpose register {name!r} in CpuState.gprs")
        setattr(regs, name, value)
    regs.rip = state.rip
    if state.rsp or "rsp" not in state.gprs:
        regs.rsp = state.rsp
    regs.rflags = state.rflags | 0x2  # bit 1 is reserved, always 1
    return regs


def build_kvm_sregs(state: CpuState, current: abi.kvm_sregs | None = None) -> abi.kvm_sregs:
    """kvm_sregs for ``state``; fields CpuState does not describe (apic_base, cr2, cr8, the pending
    interrupt bitmap) come from ``current`` (what KVM_GET_SREGS returned) or stay 0."""
    sregs = abi.kvm_sregs.from_buffer_copy(current) if current is not None else abi.kvm_sregs()
    for name in _SEGMENTS:
        setattr(sregs, name, build_kvm_segment(getattr(state, name)))
    sregs.gdt = _dtable(state.gdt)
    sregs.idt = _dtable(state.idt)
    sregs.cr0 = state.cr0
    sregs.cr3 = state.cr3
    sregs.cr4 = state.cr4
    sregs.efer = state.efer
    return sregs


def _dtable(t: DescriptorTable) -> abi.kvm_dtable:
    return abi.kvm_dtable(base=t.base, limit=t.limit)


def build_kvm_fpu() -> abi.kvm_fpu:
    fpu = abi.kvm_fpu()
    fpu.fcw = FPU_FCW_DEFAULT
    fpu.mxcsr = MXCSR_DEFAULT
    return fpu


def setup_vcpu_common(vcpu, supported_cpuid, cpus: int, pv_clock: bool | None = None) -> None:
    """What every vCPU gets before its first KVM_RUN: its CPUID table, the boot MSRs, a reset FPU.
    kvmclock is offered except on kvm_pvm (a real Linux cannot run there anyway, platform.md)."""
    if pv_clock is None:
        from ..kvm import is_kvm_pvm
        pv_clock = not is_kvm_pvm()
    vcpu.set_cpuid2(build_vcpu_cpuid(supported_cpuid, vcpu.index, cpus, pv_clock=pv_clock))
    vcpu.set_msrs(build_boot_msrs())
    vcpu.set_fpu(build_kvm_fpu())


def setup_boot_vcpu(vcpu, state: CpuState) -> None:
    """Load the protocol's entry state into the boot vCPU (sregs first: they set the mode)."""
    vcpu.set_sregs(build_kvm_sregs(state, vcpu.get_sregs()))
    vcpu.set_regs(build_kvm_regs(state))
