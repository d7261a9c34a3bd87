"""Initial vCPU state as plain data.

boot/ computes a :class:`CpuState` for the chosen entry protocol; the VMM applies it to a KVM vCPU
(vmm/ converts it to kvm_regs/kvm_sregs, so that neither boot/ nor kvm/ knows of the other).  Tests
read it back with no /dev/kvm.

Segment fields follow the hidden descriptor cache as KVM's ``struct kvm_segment`` spells them
(type, present, dpl, db, s, l, g, avl, unusable), which is also the SDM's "segment descriptor" layout
(Intel SDM Vol. 3A 3.4.5).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..image.model import Protocol


@dataclass(frozen=True)
class Segment:
    selector: int = 0
    base: int = 0
    limit: int = 0
    type: int = 0
    present: int = 0
    dpl: int = 0
    db: int = 0
    s: int = 0
    l: int = 0  # noqa: E741 - the SDM's and KVM's name for the 64-bit code flag
    g: int = 0
    avl: int = 0
    unusable: int = 0


@dataclass(frozen=True)
class DescriptorTable:
    base: int = 0
    limit: int = 0


@dataclass(frozen=True)
class CpuState:
    """Everything the boot vCPU needs before its first KVM_RUN."""

    protocol: Protocol
    rip: int
    rsp: int = 0
    rflags: int = 0x2  # bit 1 is reserved and always set
    gprs: dict[str, int] = field(default_factory=dict)  # e.g. {"rbx": start_info} / {"rsi": zero page}
    cr0: int = 0
    cr3: int = 0
    cr4: int = 0
    efer: int = 0
    cs: Segment = Segment()
    ds: Segment = Segment()
    es: Segment = Segment()
    fs: Segment = Segment()
    gs: Segment = Segment()
    ss: Segment = Segment()
    tr: Segment = Segment()
    ldt: Segment = Segment()
    gdt: DescriptorTable = DescriptorTable()
    idt: DescriptorTable = DescriptorTable()


# ---------------------------------------------------------------------------------------------
# Builders: pure functions from (protocol, addresses) to a CpuState, and the GDT / page tables
# that back the segment and paging state in guest memory.  No KVM here.
# ---------------------------------------------------------------------------------------------

# Selectors of pvhboot's boot GDT.  Linux's boot protocol (Documentation/arch/x86/boot.rst,
# "32-bit Boot Protocol" / "64-bit Boot Protocol") requires __BOOT_CS = 0x10 and __BOOT_DS = 0x18;
# the PVH ABI leaves selectors unspecified, so PVH uses the same GDT.
GDT_ENTRY_BOOT_CS = 2
GDT_ENTRY_BOOT_DS = 3
GDT_ENTRY_BOOT_TSS = 4  # a 16-byte system descriptor in long mode: slots 4 and 5
BOOT_CS = GDT_ENTRY_BOOT_CS * 8  # 0x10
BOOT_DS = GDT_ENTRY_BOOT_DS * 8  # 0x18
BOOT_TSS = GDT_ENTRY_BOOT_TSS * 8  # 0x20
GDT_ENTRIES = 6

# Segment types (SDM Vol. 3A Table 3-1 and 3-2).
SEG_TYPE_CODE_XR_ACCESSED = 0xB  # execute/read, accessed
SEG_TYPE_DATA_RW_ACCESSED = 0x3  # read/write, accessed
SEG_TYPE_LDT = 0x2
SEG_TYPE_TSS_BUSY = 0xB  # 32-bit busy TSS in legacy mode; 64-bit busy TSS in long mode
TSS_LIMIT = 0x67  # 104-byte TSS, the minimum (SDM 7.2.1); the PVH ABI asks for exactly this

# Control registers and EFER (SDM Vol. 3A 2.5, 2.2.1).
X86_CR0_PE = 1 << 0
X86_CR0_ET = 1 << 4
X86_CR0_NE = 1 << 5
X86_CR0_PG = 1 << 31
X86_CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
X86_EFLAGS_FIXED = 0x2  # bit 1 always reads 1; IF, TF, VM clear

# Page-table entry bits (SDM Vol. 3A 4.5).
PTE_PRESENT = 1 << 0
PTE_RW = 1 << 1
PTE_PS = 1 << 7


def gdt_entry(*, base: int = 0, limit: int = 0, type: int = 0, s: int = 0, dpl: int = 0,
              present: int = 1, avl: int = 0, l: int = 0, db: int = 0, g: int = 0) -> int:  # noqa: E741
    """Encode one 8-byte segment descriptor (SDM Vol. 3A Figure 3-8) as an int.

    ``limit`` is the byte-granular limit as the hidden descriptor cache holds it: with ``g=1`` it
    must end in 0xfff and the descriptor stores ``limit >> 12``.
    """
    if g:
        if limit & 0xFFF != 0xFFF:
            raise ValueError(f"page-granular limit {limit:#x} must end in 0xfff")
        raw_limit = limit >> 12
    else:
        raw_limit = limit
    if raw_limit > 0xFFFFF or base > 0xFFFFFFFF:
        raise ValueError(f"descriptor base {base:#x} / limit {limit:#x} out of range")
    access = (type & 0xF) | ((s & 1) << 4) | ((dpl & 3) << 5) | ((present & 1) << 7)
    flags = (avl & 1) | ((l & 1) << 1) | ((db & 1) << 2) | ((g & 1) << 3)
    return (
        (raw_limit & 0xFFFF)
        | (base & 0xFFFFFF) << 16
        | access << 40
        | ((raw_limit >> 16) & 0xF) << 48
        | flags << 52
        | ((base >> 24) & 0xFF) << 56
    )


def segment_from_gdt_entry(selector: int, entry: int) -> Segment:
    """Decode a descriptor into the hidden-cache form KVM uses (inverse of :func:`gdt_entry`)."""
    raw_limit = (entry & 0xFFFF) | ((entry >> 48) & 0xF) << 16
    base = ((entry >> 16) & 0xFFFFFF) | ((entry >> 56) & 0xFF) << 24
    access = (entry >> 40) & 0xFF
    flags = (entry >> 52) & 0xF
    g = (flags >> 3) & 1
    return Segment(
        selector=selector, base=base, limit=(raw_limit << 12) | 0xFFF if g else raw_limit,
        type=access & 0xF, s=(access >> 4) & 1, dpl=(access >> 5) & 3, present=(access >> 7) & 1,
        avl=flags & 1, l=(flags >> 1) & 1, db=(flags >> 2) & 1, g=g,
    )


def gdt_entry_from_segment(seg: Segment) -> int:
    return gdt_entry(base=seg.base, limit=seg.limit, type=seg.type, s=seg.s, dpl=seg.dpl,
                     present=seg.present, avl=seg.avl, l=seg.l, db=seg.db, g=seg.g)


def _flat_code(long_mode: bool) -> Segment:
    # 64-bit code: L=1 and D must be 0 (SDM 5.2.1); 32-bit code: D=1.
    return Segment(selector=BOOT_CS, base=0, limit=0xFFFFFFFF, type=SEG_TYPE_CODE_XR_ACCESSED,
                   present=1, dpl=0, db=0 if long_mode else 1, s=1, l=1 if long_mode else 0, g=1)


def _flat_data() -> Segment:
    return Segment(selector=BOOT_DS, base=0, limit=0xFFFFFFFF, type=SEG_TYPE_DATA_RW_ACCESSED,
                   present=1, dpl=0, db=1, s=1, l=0, g=1)


def _busy_tss() -> Segment:
    return Segment(selector=BOOT_TSS, base=0, limit=TSS_LIMIT, type=SEG_TYPE_TSS_BUSY, present=1,
                   dpl=0, db=0, s=0, l=0, g=0)


# LDTR as after reset (SDM Table 9-1): selector 0, base 0, limit 0xffff, an LDT descriptor.
_LDT = Segment(selector=0, base=0, limit=0xFFFF, type=SEG_TYPE_LDT, present=1)


def build_gdt(protocol: Protocol) -> bytes:
    """The boot GDT for ``protocol`` as bytes: null, null, __BOOT_CS, __BOOT_DS, busy TSS (16 bytes).

    __BOOT_CS is a 64-bit code segment for linux64 and a 32-bit one for pvh and linux32.
    """
    entries = [0, 0, gdt_entry_from_segment(_flat_code(Protocol(protocol) is Protocol.LINUX64)),
               gdt_entry_from_segment(_flat_data()), gdt_entry_from_segment(_busy_tss()),
               0]  # upper half of the 16-byte long-mode TSS descriptor: base[63:32] = 0
    return b"".join(e.to_bytes(8, "little") for e in entries)


def build_page_tables(pml4: int, pdpt: int, pd: int, size: int) -> bytes:
    """Identity map of [0, size) with 2 MiB pages: PML4 page, PDPT page, then size/1GiB PD pages.

    The pages are contiguous in the returned bytes, in that order, for the addresses given; the
    caller writes them at ``pml4`` (and ``pdpt == pml4 + 4096``, ``pd == pdpt + 4096``).
    """
    if pdpt != pml4 + 0x1000 or pd != pdpt + 0x1000:
        raise ValueError("page tables must be contiguous: PML4, PDPT, PDs")
    n_pd = (size + (1 << 30) - 1) >> 30
    if not 1 <= n_pd <= 512:
        raise ValueError(f"identity map size {size:#x} needs 1..512 page directories")
    out = bytearray(0x1000 * (2 + n_pd))
    out[0:8] = (pdpt | PTE_PRESENT | PTE_RW).to_bytes(8, "little")
    for i in range(n_pd):
        off = 0x1000 + 8 * i
        out[off : off + 8] = ((pd + 0x1000 * i) | PTE_PRESENT | PTE_RW).to_bytes(8, "little")
    for j in range(512 * n_pd):
        off = 0x2000 + 8 * j
        out[off : off + 8] = ((j << 21) | PTE_PRESENT | PTE_RW | PTE_PS).to_bytes(8, "little")
    return bytes(out)


def build_cpu_state(protocol: Protocol, *, entry: int, boot_info: int, gdt_base: int, gdt_size: int,
                    idt_base: int, idt_size: int, stack_pointer: int = 0, cr3: int = 0) -> CpuState:
    """Initial boot-vCPU state for ``protocol``.

    * pvh: Xen docs/misc/pvh.pandoc -- CR0 = PE only, CR4 = 0, EFER = 0, flat 32-bit CS (type 0xb)
      and DS/ES/SS/FS/GS (type 3), TR a busy 32-bit TSS with base 0 and limit 0x67, EFLAGS 0x2,
      EBX = hvm_start_info; RIP = XEN_ELFNOTE_PHYS32_ENTRY.
    * linux32: boot.rst "32-bit Boot Protocol" -- protected mode, paging off, CS = __BOOT_CS and
      data = __BOOT_DS (flat), ESI = boot_params, EBP = EDI = EBX = 0, interrupts off.
    * linux64: boot.rst "64-bit Boot Protocol" -- long mode with paging (identity map at ``cr3``),
      64-bit __BOOT_CS, RSI = boot_params, interrupts off.
    """
    gdt = DescriptorTable(base=gdt_base, limit=gdt_size - 1)
    idt = DescriptorTable(base=idt_base, limit=idt_size - 1)
    data = _flat_data()
    common = dict(rip=entry, rflags=X86_EFLAGS_FIXED, ds=data, es=data, fs=data, gs=data, ss=data,
                  tr=_busy_tss(), ldt=_LDT, gdt=gdt, idt=idt)
    protocol = Protocol(protocol)
    if protocol is Protocol.PVH:
        return CpuState(protocol=protocol, rsp=stack_pointer, gprs={"rbx": boot_info}, cr0=X86_CR0_PE,
                        cr4=0, efer=0, cs=_flat_code(False), **common)
    if protocol is Protocol.LINUX32:
        return CpuState(protocol=protocol, rsp=stack_pointer,
                        gprs={"rsi": boot_info, "rbp": 0, "rdi": 0, "rbx": 0},
                        cr0=X86_CR0_PE | X86_CR0_ET, cr4=0, efer=0, cs=_flat_code(False), **common)
    if protocol is Protocol.LINUX64:
        if not cr3:
            raise ValueError("linux64 needs page tables (cr3)")
        return CpuState(protocol=protocol, rsp=stack_pointer, gprs={"rsi": boot_info},
                        cr0=X86_CR0_PE | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG, cr3=cr3,
                        cr4=X86_CR4_PAE, efer=EFER_LME | EFER_LMA, cs=_flat_code(True), **common)
    raise ValueError(f"unknown protocol {protocol!r}")
