"""pvhboot.abi.kvm against linux/kvm.h and asm/kvm.h: sizes, offsets, ioctl numbers.

Expected values are the numbers the public headers give (computed by hand from _IOC's encoding
or read from a C build of <linux/kvm.h>), not re-derived from pvhboot's own helpers.
"""
import ctypes
import shutil
import subprocess

import pytest

from pvhboot.abi import kvm as abi

SIZES = {
    "kvm_regs": 144, "kvm_sregs": 312, "kvm_segment": 24, "kvm_dtable": 16,
    "kvm_userspace_memory_region": 32, "kvm_run": 2352, "kvm_cpuid_entry2": 40, "kvm_cpuid2": 8,
    "kvm_msrs": 8, "kvm_msr_entry": 16, "kvm_irq_level": 8, "kvm_pit_config": 64, "kvm_fpu": 416,
    "kvm_mp_state": 4, "kvm_coalesced_mmio_zone": 16, "kvm_coalesced_mmio": 24,
    "kvm_coalesced_mmio_ring": 8, "kvm_translation": 24,
}

IOCTLS = {
    "KVM_GET_API_VERSION": 0xAE00, "KVM_CREATE_VM": 0xAE01, "KVM_CHECK_EXTENSION": 0xAE03,
    "KVM_GET_VCPU_MMAP_SIZE": 0xAE04, "KVM_GET_SUPPORTED_CPUID": 0xC008AE05, "KVM_CREATE_VCPU": 0xAE41,
    "KVM_SET_USER_MEMORY_REGION": 0x4020AE46, "KVM_SET_TSS_ADDR": 0xAE47,
    "KVM_SET_IDENTITY_MAP_ADDR": 0x4008AE48, "KVM_CREATE_IRQCHIP": 0xAE60, "KVM_IRQ_LINE": 0x4008AE61,
    "KVM_REGISTER_COALESCED_MMIO": 0x4010AE67, "KVM_UNREGISTER_COALESCED_MMIO": 0x4010AE68,
    "KVM_IRQ_LINE_STATUS": 0xC008AE67, "KVM_CREATE_PIT2": 0x4040AE77, "KVM_RUN": 0xAE80,
    "KVM_GET_REGS": 0x8090AE81, "KVM_SET_REGS": 0x4090AE82, "KVM_GET_SREGS": 0x8138AE83,
    "KVM_SET_SREGS": 0x4138AE84, "KVM_TRANSLATE": 0xC018AE85, "KVM_GET_MSRS": 0xC008AE88,
    "KVM_SET_MSRS": 0x4008AE89, "KVM_GET_FPU": 0x81A0AE8C, "KVM_SET_FPU": 0x41A0AE8D,
    "KVM_SET_CPUID2": 0x4008AE90, "KVM_GET_CPUID2": 0xC008AE91, "KVM_GET_MP_STATE": 0x8004AE98,
    "KVM_SET_MP_STATE": 0x4004AE99,
}


@pytest.mark.parametrize("name,size", sorted(SIZES.items()))
def test_struct_sizes(name, size):
    assert ctypes.sizeof(getattr(abi, name)) == size


@pytest.mark.parametrize("name,value", sorted(IOCTLS.items()))
def test_ioctl_numbers(name, value):
    assert getattr(abi, name) == value, f"{name} = {getattr(abi, name):#x}, header says {value:#x}"


def test_kvm_run_offsets():
    r = abi.kvm_run
    assert (r.immediate_exit.offset, r.exit_reason.offset, r.if_flag.offset, r.cr8.offset,
            r.apic_base.offset, r.u.offset, r.kvm_valid_regs.offset, r.s.offset) == (1, 8, 13, 16, 24, 32, 288, 304)
    assert (abi.kvm_run_io.port.offset, abi.kvm_run_io.count.offset, abi.kvm_run_io.data_offset.offset) == (2, 4, 8)
    assert (abi.kvm_run_mmio.data.offset, abi.kvm_run_mmio.len.offset, abi.kvm_run_mmio.is_write.offset) == (8, 16, 20)
    assert abi.kvm_run_internal.data.offset == 8
    assert abi.kvm_run_system_event.data.offset == 8
    assert abi.kvm_run_fail_entry.cpu.offset == 8


def test_sregs_offsets():
    s = abi.kvm_sregs
    assert (s.tr.offset, s.gdt.offset, s.cr0.offset, s.efer.offset, s.apic_base.offset,
            s.interrupt_bitmap.offset) == (144, 192, 224, 264, 272, 280)


def test_flexible_arrays():
    assert ctypes.sizeof(abi.kvm_cpuid2_with(3)) == 8 + 3 * 40
    assert ctypes.sizeof(abi.kvm_msrs_with(5)) == 8 + 5 * 16
    assert abi.kvm_cpuid2_with(3) is abi.kvm_cpuid2_with(3)
    assert abi.kvm_coalesced_mmio_max(4096) == 170  # (4096 - 8) / 24
    # asm/kvm.h (x86): the PIO data page is page 1 of the vCPU mapping, the coalesced ring page 2
    assert (abi.KVM_PIO_PAGE_OFFSET, abi.KVM_COALESCED_MMIO_PAGE_OFFSET) == (1, 2)


def test_enums():
    assert abi.KvmExit.IO == 2 and abi.KvmExit.HLT == 5 and abi.KvmExit.SHUTDOWN == 8
    assert abi.KvmExit.INTERNAL_ERROR == 17 and abi.KvmExit.SYSTEM_EVENT == 24
    assert abi.KvmCap.COALESCED_PIO == 162 and abi.KvmCap.IMMEDIATE_EXIT == 136
    assert abi.KvmCap.COALESCED_MMIO == 15 and abi.KvmCap.MAX_VCPUS == 66


_C_CHECK = r"""
#include <linux/kvm.h>
#include <stddef.h>
#include <stdio.h>
int main(void) {
  printf("%zu %zu %zu %zu %zu %zu %zu\n", sizeof(struct kvm_run), sizeof(struct kvm_sregs),
         sizeof(struct kvm_fpu), offsetof(struct kvm_run, immediate_exit), offsetof(struct kvm_run, s),
         sizeof(struct kvm_cpuid_entry2), sizeof(struct kvm_pit_config));
  printf("%lx %lx %lx %lx\n", (unsigned long)KVM_RUN, (unsigned long)KVM_SET_USER_MEMORY_REGION,
         (unsigned long)KVM_GET_SUPPORTED_CPUID, (unsigned long)KVM_SET_MSRS);
  return 0;
}
"""


def test_against_installed_header(tmp_path):
    """A second oracle: the C compiler's view of this machine's <linux/kvm.h>."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler to read <linux/kvm.h>")
    src = tmp_path / "k.c"
    src.write_text(_C_CHECK)
    build = subprocess.run([cc, "-o", str(tmp_path / "k"), str(src)], capture_output=True, text=True)
    if build.returncode:
        pytest.skip(f"<linux/kvm.h> not available: {build.stderr.strip()[:200]}")
    out = subprocess.run([str(tmp_path / "k")], capture_output=True, text=True, check=True).stdout.split("\n")
    sizes = [int(x) for x in out[0].split()]
    assert sizes == [ctypes.sizeof(abi.kvm_run), 312, 416, 1, 304, 40, 64]
    assert [int(x, 16) for x in out[1].split()] == [abi.KVM_RUN, abi.KVM_SET_USER_MEMORY_REGION,
                                                    abi.KVM_GET_SUPPORTED_CPUID, abi.KVM_SET_MSRS]
