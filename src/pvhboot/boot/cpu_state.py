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

    protocol: str  # "pvh" | "linux32" | "linux64"
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
