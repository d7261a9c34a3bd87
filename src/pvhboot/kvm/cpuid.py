"""Per-vCPU CPUID tables built from KVM_GET_SUPPORTED_CPUID (pure: no ioctl here).

Facts used (Intel SDM Vol. 2A CPUID; AMD APM Vol. 3 E.4; Documentation/virt/kvm/x86/cpuid.rst):
leaf 1 EBX[31:24] initial APIC id, EBX[23:16] logical processors per package (valid with EDX.HTT),
ECX[31] "running under a hypervisor"; leaf 4 EAX[31:26] cores per package - 1, EAX[25:14] threads
sharing the cache - 1; leaves 0xB/0x1F the x2APIC topology (EAX[4:0] shift to the next level, EBX
logical processors at this level, ECX[15:8] level type (1 SMT, 2 core) | ECX[7:0] subleaf, EDX x2APIC id);
0x40000000 the hypervisor vendor leaf; 0x40000001 the KVM PV feature bits, cleared here because
kvm_pvm never returns from vmcall (platform.md), and a guest that sees no PV features uses none.
"""
from __future__ import annotations

import ctypes

from ..abi import kvm as abi

CPUID_HYPERVISOR_BIT = 1 << 31  # leaf 1 ECX
CPUID_HTT_BIT = 1 << 28  # leaf 1 EDX
KVM_CPUID_SIGNATURE = 0x40000000
KVM_CPUID_FEATURES = 0x40000001
# "KVMKVMKVM\0\0\0" in EBX, ECX, EDX (arch/x86/include/uapi/asm/kvm_para.h KVM_SIGNATURE)
_KVM_SIG = b"KVMKVMKVM\0\0\0"
# The paravirtual clock bits of KVM_CPUID_FEATURES EAX (asm/kvm_para.h: KVM_FEATURE_CLOCKSOURCE 0,
# KVM_FEATURE_CLOCKSOURCE2 3, KVM_FEATURE_CLOCKSOURCE_STABLE_BIT 24).  kvmclock is driven by MSRs,
# not vmcall.  Without it a Linux guest under nested KVM cannot calibrate its TSC against the PIT
# ("tsc: Unable to calibrate against PIT") and stalls (seen in the rig, tests/rig).
KVM_PV_CLOCK_FEATURES = (1 << 0) | (1 << 3) | (1 << 24)


def _bits_for(n: int) -> int:
    """Number of APIC-id bits needed to number ``n`` items (ceil(log2(n)))."""
    return max(0, (n - 1).bit_length())


def _copy(e: abi.kvm_cpuid_entry2) -> abi.kvm_cpuid_entry2:
    return abi.kvm_cpuid_entry2.from_buffer_copy(e)


def build_vcpu_cpuid(supported: list[abi.kvm_cpuid_entry2], index: int, cpus: int, *,
                     pv_clock: bool = False) -> list[abi.kvm_cpuid_entry2]:
    """The CPUID table for vCPU ``index`` of ``cpus`` (one socket, one thread per core, APIC id = index).
    ``pv_clock`` keeps KVM's supported kvmclock bits (and no other PV feature)."""
    if not 0 <= index < cpus:
        raise ValueError(f"vCPU index {index} not in 0..{cpus - 1}")
    out: list[abi.kvm_cpuid_entry2] = []
    core_bits = _bits_for(cpus)
    have_sig = False
    for src in supported:
        e = _copy(src)
        fn = e.function
        if fn == 1:
            e.ebx = (e.ebx & 0x0000FFFF) | (index << 24) | (min(cpus, 255) << 16)
            e.ecx |= CPUID_HYPERVISOR_BIT
            if cpus > 1:
                e.edx |= CPUID_HTT_BIT
        elif fn == 4:
            cache_level = (e.eax >> 5) & 0x7
            threads = cpus - 1 if cache_level >= 3 else 0  # L3 shared by all cores, L1/L2 private
            e.eax = (e.eax & 0x3FFF) | ((threads & 0xFFF) << 14) | (((cpus - 1) & 0x3F) << 26)
        elif fn in (0xB, 0x1F):
            e.edx = index  # x2APIC id of this logical processor
            if e.index == 0:  # SMT level: one thread per core
                e.eax, e.ebx, e.ecx = 0, 1, (1 << 8) | 0
            elif e.index == 1:  # core level: all vCPUs in one package
                e.eax, e.ebx, e.ecx = core_bits, cpus, (2 << 8) | 1
            else:  # invalid level terminates the enumeration
                e.eax, e.ebx, e.ecx = 0, 0, e.index
        elif fn == 0x80000008:
            # AMD: ECX[7:0] NC = cores - 1, ECX[15:12] ApicIdCoreIdSize
            e.ecx = (e.ecx & ~0xF0FF) | ((cpus - 1) & 0xFF) | ((core_bits & 0xF) << 12)
        elif fn == KVM_CPUID_SIGNATURE:
            have_sig = True
            _set_signature(e)
        elif fn == KVM_CPUID_FEATURES:
            # no KVM PV feature that uses vmcall (it never returns on kvm_pvm); kvmclock on request
            e.eax = e.eax & KVM_PV_CLOCK_FEATURES if pv_clock else 0
            e.ebx = e.ecx = e.edx = 0
        out.append(e)
    if not have_sig:
        sig = abi.kvm_cpuid_entry2(function=KVM_CPUID_SIGNATURE)
        _set_signature(sig)
        out.append(sig)
    if not any(e.function == KVM_CPUID_FEATURES for e in out):
        out.append(abi.kvm_cpuid_entry2(function=KVM_CPUID_FEATURES))
    return out


def _set_signature(e: abi.kvm_cpuid_entry2) -> None:
    e.eax = KVM_CPUID_FEATURES  # highest hypervisor leaf
    e.ebx, e.ecx, e.edx = (int.from_bytes(_KVM_SIG[i:i + 4], "little") for i in (0, 4, 8))


def find(entries: list[abi.kvm_cpuid_entry2], function: int, index: int = 0) -> abi.kvm_cpuid_entry2 | None:
    for e in entries:
        if e.function == function and (e.index == index or not e.flags & abi.KVM_CPUID_FLAG_SIGNIFCANT_INDEX):
            return e
    return None


assert ctypes.sizeof(abi.kvm_cpuid_entry2) == 40
