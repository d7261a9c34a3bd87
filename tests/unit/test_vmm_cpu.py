"""CpuState -> kvm_regs / kvm_sregs (no KVM), per-vCPU CPUID tables, boot MSRs, crash report text."""
import pytest

from pvhboot.abi import kvm as abi
from pvhboot.boot.cpu_state import CpuState, build_cpu_state
from pvhboot.kvm.cpuid import build_vcpu_cpuid, find
from pvhboot.kvm.msrs import build_boot_msrs
from pvhboot.vmm.cpu import build_kvm_regs, build_kvm_sregs, segment_from_kvm
from pvhboot.vmm.crash import (
    FIRST_TROUBLE_LINES,
    CrashInfo,
    FirstTrouble,
    VcpuSnapshot,
    disassembly_mode,
    format_crash_report,
)


def pvh_state():
    return build_cpu_state("pvh", entry=0x1000850, boot_info=0x6000, gdt_base=0x500, gdt_size=48,
                           idt_base=0x540, idt_size=8)


def test_pvh_sregs():
    st = pvh_state()
    s = build_kvm_sregs(st)
    assert s.cr0 == 1 and s.cr4 == 0 and s.efer == 0
    assert (s.cs.base, s.cs.limit, s.cs.type, s.cs.db, s.cs.l, s.cs.s, s.cs.present, s.cs.g) == \
        (0, 0xFFFFFFFF, 0xB, 1, 0, 1, 1, 1)
    for seg in (s.ds, s.es, s.ss):
        assert (seg.base, seg.limit, seg.type, seg.db) == (0, 0xFFFFFFFF, 0x3, 1)
    assert (s.tr.type, s.tr.limit, s.tr.s, s.tr.present) == (0xB, 0x67, 0, 1)
    assert (s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit) == (0x500, 47, 0x540, 7)
    assert segment_from_kvm(s.cs) == st.cs  # round trip


def test_pvh_regs():
    r = build_kvm_regs(pvh_state())
    assert r.rip == 0x1000850 and r.rbx == 0x6000 and r.rflags == 0x2 and r.rsi == 0


def test_linux64_sregs_and_regs():
    st = build_cpu_state("linux64", entry=0x1000200, boot_info=0x7000, gdt_base=0x500, gdt_size=48,
                         idt_base=0x540, idt_size=8, stack_pointer=0x8FF0, cr3=0x9000)
    s = build_kvm_sregs(st)
    assert s.cr0 & (1 << 31) and s.cr0 & 1 and s.cr4 & (1 << 5) and s.cr3 == 0x9000
    assert s.efer & (1 << 8) and s.efer & (1 << 10)
    assert s.cs.l == 1 and s.cs.db == 0
    r = build_kvm_regs(st)
    assert r.rsi == 0x7000 and r.rsp == 0x8FF0 and r.rip == 0x1000200


def test_sregs_keeps_unmodelled_fields():
    cur = abi.kvm_sregs()
    cur.apic_base = 0xFEE00900
    cur.cr2 = 0x1234
    s = build_kvm_sregs(pvh_state(), cur)
    assert s.apic_base == 0xFEE00900 and s.cr2 == 0x1234
    assert cur.cr0 == 0  # the input is not modified


def test_unknown_gpr_rejected():
    with pytest.raises(ValueError, match="xyz"):
        build_kvm_regs(CpuState(protocol="pvh", rip=0, gprs={"xyz": 1}))


def _supported():
    def e(fn, idx=0, eax=0, ebx=0, ecx=0, edx=0, flags=0):
        return abi.kvm_cpuid_entry2(function=fn, index=idx, flags=flags, eax=eax, ebx=ebx, ecx=ecx, edx=edx)
    sig = abi.KVM_CPUID_FLAG_SIGNIFCANT_INDEX
    return [e(0, eax=0xD), e(1, ebx=0x05000800, ecx=0x1, edx=0x1),  # host says APIC id 5
            e(4, 0, eax=0x121, flags=sig), e(4, 3, eax=0x163, flags=sig),
            e(0xB, 0, flags=sig), e(0xB, 1, flags=sig), e(0xB, 2, flags=sig),
            e(0x40000001, eax=0xFFFFFFFF, edx=1), e(0x80000008, ecx=0x3007)]


def test_cpuid_per_vcpu():
    t = build_vcpu_cpuid(_supported(), 2, 4)
    l1 = find(t, 1)
    assert l1.ebx >> 24 == 2  # APIC id overwritten (the host's 5 is gone)
    assert (l1.ebx >> 16) & 0xFF == 4
    assert l1.ebx & 0xFFFF == 0x0800  # clflush size etc. kept
    assert l1.ecx & (1 << 31) and l1.ecx & 1
    assert l1.edx & (1 << 28)
    smt, core, end = find(t, 0xB, 0), find(t, 0xB, 1), find(t, 0xB, 2)
    assert (smt.eax, smt.ebx, (smt.ecx >> 8) & 0xFF, smt.edx) == (0, 1, 1, 2)
    assert (core.eax, core.ebx, (core.ecx >> 8) & 0xFF, core.ecx & 0xFF, core.edx) == (2, 4, 2, 1, 2)
    assert (end.ebx, (end.ecx >> 8) & 0xFF) == (0, 0)
    assert find(t, 4, 0).eax >> 26 == 3 and (find(t, 4, 0).eax >> 14) & 0xFFF == 0
    assert (find(t, 4, 3).eax >> 14) & 0xFFF == 3  # L3 shared by all 4
    assert find(t, 0x80000008).ecx & 0xFF == 3
    sig = find(t, 0x40000000)
    assert sig.eax == 0x40000001
    vendor = sig.ebx.to_bytes(4, "little") + sig.ecx.to_bytes(4, "little") + sig.edx.to_bytes(4, "little")
    assert vendor == b"KVMKVMKVM\0\0\0"
    pv = find(t, 0x40000001)
    assert (pv.eax, pv.ebx, pv.ecx, pv.edx) == (0, 0, 0, 0)  # KVM PV features cleared


def test_cpuid_single_vcpu_and_bad_index():
    t = build_vcpu_cpuid(_supported(), 0, 1)
    assert find(t, 1).ebx >> 24 == 0 and not find(t, 1).edx & (1 << 28)
    with pytest.raises(ValueError):
        build_vcpu_cpuid(_supported(), 1, 1)


def test_boot_msrs():
    m = build_boot_msrs()
    assert m[abi.MSR_MTRRdefType] == (1 << 11) | 6
    assert m[abi.MSR_IA32_MISC_ENABLE] & 1
    for msr in (0x174, 0x175, 0x176, 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084, 0xC0000102, 0x10):
        assert m[msr] == 0


def test_crash_report_text():
    st = pvh_state()
    regs, sregs = build_kvm_regs(st), build_kvm_sregs(st)
    assert disassembly_mode(sregs) == 32
    snap = VcpuSnapshot(0, regs, sregs, code=bytes([0x0F, 0x0B, 0x90]), code_addr=regs.rip)

    class Syms:
        def lookup(self, addr):
            return ("pvh_start_xen", addr - 0x1000800) if addr == 0x1000850 else None

    text = format_crash_report(CrashInfo("triple fault", 0, "KVM_EXIT_SHUTDOWN", snapshots=[snap]),
                               [f"line {i}" for i in range(60)], Syms(), on_kvm_pvm=True)
    assert "triple fault on vCPU 0" in text
    assert "ud2" in text and "0x1000850:" in text
    assert "<pvh_start_xen+0x50>" in text
    assert "line 59" in text and "line 19" not in text and "line 20" in text  # last 40 lines
    assert "kvm_pvm" in text and "unmodified Linux kernel cannot run" in text
    assert "CR0=0x1 " in text and "EBX" not in text and "RBX=0x0000000000006000" in text


def test_crash_report_explains_reset_state_and_quotes_the_panic():
    """AMD SVM resets the vCPU on a shutdown intercept: the report must say the RIP is not the fault,
    and quote the guest's own last words."""
    import ctypes

    regs, sregs = abi.kvm_regs(), abi.kvm_sregs()
    regs.rip, sregs.cs.base, sregs.cs.selector = 0xFFF0, 0xFFFF0000, 0xF000
    snap = VcpuSnapshot(0, regs, sregs, code=None)
    console = ["[    1.0] Run /nonexistent as init process",
               "[    1.1] Kernel panic - not syncing: No working init found.", "[    1.2] ---[ end ]---"]
    text = format_crash_report(CrashInfo("triple fault", 0, "KVM_EXIT_SHUTDOWN", snapshots=[snap]), console)
    assert "this is the reset state" in text
    assert "guest said: [    1.1] Kernel panic - not syncing: No working init found." in text
    regs.rip = 0xFFF1  # one byte off the reset vector: no such note
    text = format_crash_report(CrashInfo("triple fault", 0, "x", snapshots=[snap]), ["quiet"])
    assert "reset state" not in text and "guest said" not in text
    assert ctypes.sizeof(regs) == 144


def _oops_console(before: int, cascade: int) -> list[bytes]:
    """A console where a double fault's report scrolls for ``cascade`` lines before the panic."""
    lines = [f"[    1.{i:04d}] booting {i}".encode() for i in range(before)]
    lines += [b"[    7.4600] traps: PANIC: double fault, error_code: 0x0",
              b"[    7.4601] RIP: 0010:first_culprit+0x10/0x20"]
    lines += [f"[    7.5{i:03d}]  ? asm_exc_page_fault+0x9/0x30".encode() for i in range(cascade)]
    lines += [b"[    9.6735] Kernel panic - not syncing: Fatal exception in interrupt"]
    return lines


def test_first_trouble_keeps_the_first_oops_however_the_console_batches_it():
    console = _oops_console(before=500, cascade=300)
    for batch_size in (1, 7, len(console)):
        ft = FirstTrouble()
        for at in range(0, len(console), batch_size):
            ft(console[at:at + batch_size])
        assert ft.line_no == 501
        assert ft.lines[0] == "[    7.4600] traps: PANIC: double fault, error_code: 0x0"
        assert ft.lines[1] == "[    7.4601] RIP: 0010:first_culprit+0x10/0x20"
        assert len(ft.lines) == FIRST_TROUBLE_LINES  # bounded, whatever follows


def test_first_trouble_keeps_a_bounded_piece_of_a_huge_line():
    ft = FirstTrouble()
    ft([b"BUG: " + b"x" * (1 << 20)])
    assert ft.line_no == 1 and 500 <= len(ft.lines[0]) <= 512


def test_crash_report_shows_the_first_oops_when_it_scrolled_away():
    regs, sregs = abi.kvm_regs(), abi.kvm_sregs()
    snap = VcpuSnapshot(0, regs, sregs, code=None)
    console = _oops_console(before=50, cascade=300)
    ft = FirstTrouble()
    ft(console)
    last = [line.decode() for line in console[-100:]]  # the serial device's history
    text = format_crash_report(CrashInfo("timeout", 0, "wall-clock limit"), last, first_trouble=ft)
    assert "guest said: [    7.4600] traps: PANIC: double fault, error_code: 0x0" in text
    assert "first sign of trouble (console line 51):" in text
    assert "  | [    7.4601] RIP: 0010:first_culprit+0x10/0x20" in text
    assert text.index("first sign of trouble") < text.index("last 40 console lines")
    # Still in the last lines shown: no second copy.
    short = _oops_console(before=5, cascade=3)
    ft = FirstTrouble()
    ft(short)
    text = format_crash_report(CrashInfo("crash", 0, "x", snapshots=[snap]), [ln.decode() for ln in short],
                               first_trouble=ft)
    assert "first sign of trouble" not in text
    assert "guest said: [    7.4600] traps: PANIC: double fault" in text
