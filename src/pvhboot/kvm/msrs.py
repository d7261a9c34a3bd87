"""The MSRs a Linux guest expects at boot, set as Firecracker does (src/vmm/src/arch/x86_64/msr.rs,
create_boot_msr_entries): SYSENTER_*, STAR/LSTAR/CSTAR/SYSCALL_MASK/KERNEL_GS_BASE and the TSC at 0,
IA32_MISC_ENABLE with fast strings, and MTRRs enabled with write-back as the default memory type."""
from __future__ import annotations

from ..abi import kvm as abi


def build_boot_msrs() -> dict[int, int]:
    return {
        abi.MSR_IA32_SYSENTER_CS: 0,
        abi.MSR_IA32_SYSENTER_ESP: 0,
        abi.MSR_IA32_SYSENTER_EIP: 0,
        # 64-bit syscall state: cleared; the kernel programs it itself.
        abi.MSR_STAR: 0,
        abi.MSR_CSTAR: 0,
        abi.MSR_KERNEL_GS_BASE: 0,
        abi.MSR_SYSCALL_MASK: 0,
        abi.MSR_LSTAR: 0,
        abi.MSR_IA32_TSC: 0,
        # Linux expects fast-string operations enabled (arch/x86/kernel/cpu/intel.c checks this bit).
        abi.MSR_IA32_MISC_ENABLE: abi.MSR_IA32_MISC_ENABLE_FAST_STRING,
        # All memory write-back unless an MTRR says otherwise: E=1, default type WB.
        abi.MSR_MTRRdefType: abi.MSR_MTRR_DEF_TYPE_E | abi.MTRR_TYPE_WRBACK,
    }
