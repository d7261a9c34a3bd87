"""Crash reports: what a user needs to see when a guest triple-faults, hits a KVM internal error, fails
VM entry, or is stopped by the wall-clock timeout.

The report holds the general registers, segments, control registers and EFER, the bytes at RIP
disassembled with capstone (16/32/64-bit by CS.L/CS.D and EFER.LMA, SDM Vol. 3A 5.2.1), RIP
symbolized when a symbol table is available (pvhboot.image.symbols, imported lazily), the last console
lines, and on kvm_pvm a line saying an unmodified Linux cannot run on this software KVM (platform.md).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..abi import kvm as abi

if TYPE_CHECKING:
    from ..kvm.exits import InternalErrorExit

CODE_BYTES = 32  # bytes read at RIP for the disassembly
CONSOLE_LINES = 40
EFER_LMA = 1 << 10
CR0_PG = 1 << 31
KVM_PVM_NOTE = ("note: /dev/kvm here is kvm_pvm, a software hypervisor that runs CPL0 guest code "
                "through KVM's instruction emulator; an unmodified Linux kernel cannot run on it "
                "(it stops on instructions such as xsave, cmpxchg16b or int3). Use hardware KVM "
                "or the nested rig for real kernels.")
# What a vCPU looks like right after INIT/RESET (SDM Vol. 3A 9.1.4): CS base 0xffff0000, RIP 0xfff0.
RESET_CS_BASE, RESET_RIP = 0xFFFF0000, 0xFFF0
RESET_STATE_NOTE = ("  (this is the reset state: on AMD SVM KVM re-initialises the vCPU after a shutdown "
                    "intercept, so the faulting instruction is lost; on Intel VMX it is kept. "
                    "See the console lines below for what the guest said last.)")
# Console lines that say why a Linux guest died, quoted at the top of the report.
_GUEST_DEATH_MARKERS = ("Kernel panic", "BUG:", "Oops", "general protection fault", "double fault")
_DEATH_MARKERS_RE = re.compile(b"|".join(re.escape(m.encode()) for m in _GUEST_DEATH_MARKERS))
# Lines kept from the first death marker on (FirstTrouble): an oops with its call trace.
FIRST_TROUBLE_LINES = 40
_MAX_KEPT_LINE = 512  # bytes of one kept line (a guest may print a line of any length)
_GPR_ORDER = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
              "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


@dataclass
class VcpuSnapshot:
    index: int
    regs: abi.kvm_regs | None = None
    sregs: abi.kvm_sregs | None = None
    code: bytes | None = None  # bytes at RIP
    code_addr: int | None = None  # guest-physical address they were read from
    error: str | None = None  # why the state could not be read


@dataclass
class CrashInfo:
    kind: str  # "triple fault", "internal error", "fail entry", "timeout", "unexpected exit", "vmm error"
    vcpu: int = 0
    detail: str = ""
    internal: InternalErrorExit | None = None
    snapshots: list[VcpuSnapshot] = field(default_factory=list)


def vmm_error(vcpu: int, exc: BaseException) -> CrashInfo:
    """A device or VMM bug caught on a vCPU thread or the VMM's waiting thread: the VM ends with
    this report instead of hanging.  The traceback names file, line and function without reading the
    source files (a vCPU thread under the seccomp filter may not open them: vmm/seccomp.py)."""
    import traceback

    frames = [f'  File "{f.f_code.co_filename}", line {line}, in {f.f_code.co_name}'
              for f, line in traceback.walk_tb(exc.__traceback__)]
    return CrashInfo(kind="vmm error", vcpu=vcpu,
                     detail="\n".join([f"{type(exc).__name__}: {exc}", "Traceback (most recent call last):",
                                        *frames]))


def rip_linear(regs: abi.kvm_regs, sregs: abi.kvm_sregs) -> int:
    """CS.base + RIP (in 64-bit mode the CS base is ignored, SDM 3.4.4)."""
    if sregs.efer & EFER_LMA and sregs.cs.l:
        return regs.rip
    return (sregs.cs.base + regs.rip) & 0xFFFFFFFF


def capture_vcpu(vcpu, mem) -> VcpuSnapshot:
    """Read a stopped vCPU's state and the bytes at its RIP (never raises)."""
    snap = VcpuSnapshot(vcpu.index)
    try:
        snap.regs = vcpu.get_regs()
        snap.sregs = vcpu.get_sregs()
    except Exception as e:  # noqa: BLE001 - a report must not fail
        snap.error = str(e)
        return snap
    linear = rip_linear(snap.regs, snap.sregs)
    phys: int | None = linear
    if snap.sregs.cr0 & CR0_PG:
        try:
            phys = vcpu.translate(linear)
        except Exception:  # noqa: BLE001 - KVM_TRANSLATE refused: the report goes on without code bytes
            phys = None
    if phys is not None and mem is not None:
        for n in (CODE_BYTES, 16, 1):
            try:
                snap.code = mem.read(phys, n)
                snap.code_addr = phys
                break
            except Exception:  # noqa: BLE001 - RIP outside RAM, or near its end
                continue
    return snap


def disassembly_mode(sregs: abi.kvm_sregs) -> int:
    """16, 32 or 64: the code size of CS (SDM Vol. 3A 5.2.1)."""
    if sregs.efer & EFER_LMA and sregs.cs.l:
        return 64
    if sregs.cs.db:
        return 32
    return 16


def disassemble(code: bytes, address: int, bits: int, max_insns: int = 6) -> list[str]:
    """'address: bytes  mnemonic operands' lines, or a note when capstone is unavailable/undecodable."""
    try:
        import capstone
    except ImportError:
        return [f"{address:#x}: {code[:16].hex(' ')}  (capstone not installed)"]
    mode = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}[bits]
    md = capstone.Cs(capstone.CS_ARCH_X86, mode)
    out = []
    for insn in md.disasm(code, address):
        out.append(f"{insn.address:#x}: {insn.bytes.hex(' '):<24} {insn.mnemonic} {insn.op_str}".rstrip())
        if len(out) >= max_insns:
            break
    if not out:
        out.append(f"{address:#x}: {code[:16].hex(' ')}  (not decodable as {bits}-bit code)")
    return out


def symbolize(symbols, addr: int, phys_to_virt: int = 0) -> str | None:
    """'name+0x12' for ``addr`` (or for addr + phys_to_virt when only the link address matches)."""
    if symbols is None:
        return None
    for a in (addr, addr + phys_to_virt) if phys_to_virt else (addr,):
        try:
            hit = symbols.lookup(a)
        except Exception:  # noqa: BLE001
            hit = None
        if hit:
            return f"{hit[0]}+{hit[1]:#x}"
    return None


def load_symbol_table(symbols_path: str | None, kernel_elf=None):
    """A SymbolTable from ``symbols_path`` (--symbols: its errors are the user's, so they propagate as
    ImageError), else from the kernel ELF's .symtab when it has one; None when unavailable."""
    try:
        from ..image.symbols import SymbolTable, load_symbols
    except ImportError:
        return None
    if symbols_path:
        return load_symbols(symbols_path)
    if kernel_elf is not None and getattr(kernel_elf, "symbols_available", True):
        try:
            return SymbolTable.from_elf(kernel_elf)
        except Exception:  # noqa: BLE001 - a stripped kernel just gives an unsymbolized report
            return None
    return None


def _seg(name: str, s: abi.kvm_segment) -> str:
    return (f"{name.upper():<3} sel={s.selector:#06x} base={s.base:#018x} limit={s.limit:#010x} "
            f"type={s.type:#x} p={s.present} dpl={s.dpl} db={s.db} s={s.s} l={s.l} g={s.g}"
            + (" unusable" if s.unusable else ""))


def format_snapshot(snap: VcpuSnapshot, symbols=None, phys_to_virt: int = 0) -> list[str]:
    lines = [f"vCPU {snap.index}:"]
    if snap.error or snap.regs is None or snap.sregs is None:
        lines.append(f"  registers unavailable: {snap.error}")
        return lines
    r, s = snap.regs, snap.sregs
    sym = symbolize(symbols, r.rip, phys_to_virt)
    lines.append(f"  RIP={r.rip:#018x}{f' <{sym}>' if sym else ''} RFLAGS={r.rflags:#010x}")
    if r.rip == RESET_RIP and s.cs.base == RESET_CS_BASE:
        lines.append(RESET_STATE_NOTE)
    for i in range(0, len(_GPR_ORDER), 4):
        lines.append("  " + " ".join(f"{n.upper():>3}={getattr(r, n):#018x}" for n in _GPR_ORDER[i:i + 4]))
    for name in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"):
        lines.append("  " + _seg(name, getattr(s, name)))
    lines.append(f"  GDT base={s.gdt.base:#x} limit={s.gdt.limit:#x}  IDT base={s.idt.base:#x} limit={s.idt.limit:#x}")
    lines.append(f"  CR0={s.cr0:#x} CR2={s.cr2:#x} CR3={s.cr3:#x} CR4={s.cr4:#x} CR8={s.cr8:#x} "
                 f"EFER={s.efer:#x} APIC_BASE={s.apic_base:#x}")
    bits = disassembly_mode(s)
    if snap.code:
        where = f" (guest-physical {snap.code_addr:#x})" if snap.code_addr != r.rip else ""
        lines.append(f"  code at RIP, {bits}-bit{where}:")
        lines += ["    " + x for x in disassemble(snap.code, r.rip, bits)]
    else:
        lines.append("  code at RIP: not in guest RAM")
    return lines


class FirstTrouble:
    """The first console line that says the guest is dying (a death marker: an oops, a double fault, a
    panic) and the FIRST_TROUBLE_LINES lines from it on, with its line number.  The report's "last
    console lines" show how a guest ended; when one failure cascades (a double fault whose handler
    faults until its stack overflows, oopses scrolling for seconds), the first one is long gone from
    them, and it is the one that says what went wrong.  A line observer of the serial device
    (devices.Serial16550): one regex scan per batch of lines until the excerpt is full, then nothing;
    bounded memory whatever the guest prints."""

    def __init__(self, lines: int = FIRST_TROUBLE_LINES) -> None:
        self.lines: list[str] = []  # the marker line first
        self.line_no: int | None = None  # 1-based console line of the marker line
        self._want = lines
        self._seen = 0  # console lines observed before the current batch

    def __call__(self, batch: list[bytes]) -> None:
        if len(self.lines) >= self._want:
            return
        if self.line_no is None:
            if not _DEATH_MARKERS_RE.search(b"\n".join(batch)):  # the common case: one C-level scan
                self._seen += len(batch)
                return
            first = next(i for i, line in enumerate(batch) if _DEATH_MARKERS_RE.search(line))
            self.line_no = self._seen + first + 1
            batch = batch[first:]
        for line in batch[:self._want - len(self.lines)]:
            self.lines.append(line[:_MAX_KEPT_LINE].decode("utf-8", "replace").rstrip("\r"))


def format_crash_report(info: CrashInfo, console_lines: list[str] | None = None, symbols=None,
                        on_kvm_pvm: bool = False, phys_to_virt: int = 0,
                        first_trouble: FirstTrouble | None = None) -> str:
    out = [f"pvhboot: guest stopped: {info.kind} on vCPU {info.vcpu}" + (f": {info.detail.splitlines()[0]}"
                                                                         if info.detail else "")]
    if info.detail and len(info.detail.splitlines()) > 1:
        out += info.detail.splitlines()[1:]
    said = [line for line in (console_lines or []) if any(m in line for m in _GUEST_DEATH_MARKERS)]
    # The first trouble is shown on its own when its line has scrolled out of the last lines shown.
    early = first_trouble is not None and bool(first_trouble.lines) and not any(
        line.strip() == first_trouble.lines[0].strip() for line in (console_lines or [])[-CONSOLE_LINES:])
    if early:
        said = first_trouble.lines[:1]
    if said:
        out.append(f"guest said: {said[0].strip()}")
    if info.internal is not None:
        ie = info.internal
        out.append(f"KVM internal error: {ie.suberror_name}, data: "
                   + " ".join(f"{d:#x}" for d in ie.data[:ie.ndata]))
        insn = ie.instruction_bytes
        if insn:
            bits = 64
            snap = next((s for s in info.snapshots if s.index == info.vcpu and s.sregs is not None), None)
            addr = 0
            if snap:
                bits = disassembly_mode(snap.sregs)
                addr = snap.regs.rip
            out.append(f"instruction KVM could not emulate ({len(insn)} bytes: {insn.hex(' ')}):")
            out += ["  " + x for x in disassemble(insn, addr, bits, max_insns=1)]
    for snap in sorted(info.snapshots, key=lambda s: (s.index != info.vcpu, s.index)):
        out += format_snapshot(snap, symbols, phys_to_virt)
    if early:
        out.append(f"first sign of trouble (console line {first_trouble.line_no}):")
        out += ["  | " + line for line in first_trouble.lines]
    if console_lines:
        out.append(f"last {min(len(console_lines), CONSOLE_LINES)} console lines:")
        out += ["  | " + line for line in console_lines[-CONSOLE_LINES:]]
    else:
        out.append("console: (no output)")
    if on_kvm_pvm:
        out.append(KVM_PVM_NOTE)
    return "\n".join(out) + "\n"
