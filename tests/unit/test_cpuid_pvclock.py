"""kvmclock in the guest's CPUID (pvhboot.kvm.cpuid pv_clock): only the clock bits of KVM's
supported 0x40000001 EAX are offered, never a feature that makes the guest issue vmcall.  Without
kvmclock the Debian cloud kernel stalls at TSC calibration under nested KVM (tests/rig)."""
from __future__ import annotations

from pvhboot.abi import kvm as abi
from pvhboot.kvm.cpuid import KVM_PV_CLOCK_FEATURES, build_vcpu_cpuid, find


def _supported(features_eax: int):
    return [abi.kvm_cpuid_entry2(function=0, eax=0xD),
            abi.kvm_cpuid_entry2(function=0x40000001, eax=features_eax, edx=1)]


def test_pv_clock_keeps_only_the_clock_bits():
    # asm/kvm_para.h: CLOCKSOURCE 0, NOP_IO_DELAY 1, CLOCKSOURCE2 3, ASYNC_PF 4, STEAL_TIME 5,
    # PV_EOI 6, PV_UNHALT 7, PV_TLB_FLUSH 9, PV_SEND_IPI 11, PV_SCHED_YIELD 13, STABLE_BIT 24
    pv = find(build_vcpu_cpuid(_supported(0xFFFFFFFF), 0, 1, pv_clock=True), 0x40000001)
    assert KVM_PV_CLOCK_FEATURES == 0x01000009
    assert (pv.eax, pv.ebx, pv.ecx, pv.edx) == (0x01000009, 0, 0, 0)
    # a KVM that does not offer kvmclock does not get it added
    pv = find(build_vcpu_cpuid(_supported(1 << 11), 0, 1, pv_clock=True), 0x40000001)
    assert pv.eax == 0


def test_default_offers_no_pv_feature():
    pv = find(build_vcpu_cpuid(_supported(0xFFFFFFFF), 0, 1), 0x40000001)
    assert (pv.eax, pv.edx) == (0, 0)
