"""Tiny hand-assembled guests for the kvm tier (bytes, with the assembly beside them).

``real_mode`` / ``flat32`` give the CpuState the guest starts in; pvhboot.vmm.Machine runs them with
the full device set on a real /dev/kvm.
"""
from __future__ import annotations

from pvhboot.boot.cpu_state import CpuState, DescriptorTable, Segment

LOAD = 0x1000


def real_mode(rip: int = LOAD) -> CpuState:
    code = Segment(selector=0, base=0, limit=0xFFFF, type=0xB, present=1, s=1)
    data = Segment(selector=0, base=0, limit=0xFFFF, type=0x3, present=1, s=1)
    return CpuState(protocol="real", rip=rip, rsp=0x8000, cs=code, ds=data, es=data, fs=data, gs=data,
                    ss=data, tr=Segment(type=0xB, present=1, limit=0xFFFF),
                    ldt=Segment(type=0x2, present=1, limit=0xFFFF), idt=DescriptorTable(0, 0x3FF))


def flat32(rip: int = LOAD, idt_limit: int = 0) -> CpuState:
    """Flat 32-bit protected mode (the PVH entry state) with an empty IDT: any exception triple-faults."""
    code = Segment(selector=0x10, base=0, limit=0xFFFFFFFF, type=0xB, present=1, s=1, db=1, g=1)
    data = Segment(selector=0x18, base=0, limit=0xFFFFFFFF, type=0x3, present=1, s=1, db=1, g=1)
    return CpuState(protocol="pvh", rip=rip, rsp=0x8000, cr0=1, cs=code, ds=data, es=data, fs=data, gs=data,
                    ss=data, tr=Segment(selector=0x20, type=0xB, present=1, limit=0x67),
                    ldt=Segment(type=0x2, present=1, limit=0xFFFF), idt=DescriptorTable(0, idt_limit))


def debug_exit(value: int) -> bytes:
    return bytes([0xB8]) + value.to_bytes(4, "little") + bytes([0xE7, 0xF4])  # mov eax, v ; out 0xf4, eax (32-bit code)


# 16-bit: mov dx, 0x3f8 ; mov si, msg ; L: lodsb ; test al, al ; jz done ; out dx, al ; jmp L
#         done: mov al, 7 ; out 0xf4, al ; hlt          (msg at LOAD + 0x20)
HELLO_REAL = bytes([0xBA, 0xF8, 0x03, 0xBE, 0x20, 0x10, 0xAC, 0x84, 0xC0, 0x74, 0x03, 0xEE, 0xEB, 0xF8,
                    0xB0, 0x07, 0xE6, 0xF4, 0xF4])
HELLO_MSG = b"hello from the guest\n\0"

# HELLO_REAL's printing loop, then: done: cli ; L2: hlt ; jmp L2 (a guest that dies silent, stopped by
# the timeout).  msg at LOAD + 0x20.
PRINT_THEN_HANG_REAL = HELLO_REAL[:14] + bytes([0xFA, 0xF4, 0xEB, 0xFD])

# 16-bit: mov al, 0x11 ; out 0x99, al (unmapped) ; in al, 0x99 (unmapped: all ones) ;
#         mov dx, 0x1234 ; out dx, al ; in ax, dx ; out 0xf4, al (exit status = what the IN read) ; hlt
UNMAPPED_REAL = bytes([0xB0, 0x11, 0xE6, 0x99, 0xE4, 0x99, 0xBA, 0x34, 0x12, 0xEE, 0xED, 0xE6, 0xF4, 0xF4])

# 32-bit: nop ; ud2 (with an empty IDT: #UD -> #GP -> #DF -> triple fault)
TRIPLE_FAULT_32 = bytes([0x90, 0x0F, 0x0B])

# 32-bit: L: jmp L
SPIN_32 = bytes([0xEB, 0xFE])

# 32-bit: mov al, 0x40 ; out 0x80, al ; mov al, 0x41 ; out 0x80, al ; <debug_exit(0)>
MARKERS_32 = bytes([0xB0, 0x40, 0xE6, 0x80, 0xB0, 0x41, 0xE6, 0x80]) + debug_exit(0)

# 32-bit: mov byte [0xd0000000], 123 (Firecracker boot timer, MMIO) ; mov eax, [0xd0000100] (MMIO read
#         of the boot-timer page) ; mov eax, [0xe0000000] (unmapped MMIO: all ones) ; out 0xf4, eax
MMIO_32 = (bytes([0xC6, 0x05]) + (0xD0000000).to_bytes(4, "little") + bytes([123])
           + bytes([0xA1]) + (0xE0000000).to_bytes(4, "little") + bytes([0xE7, 0xF4]))

# 32-bit: mov al, 0x34 ; out 0x3c0, al via dx (ACPI S5 sleep control) ; hlt
POWEROFF_32 = bytes([0xBA, 0xC0, 0x03, 0x00, 0x00, 0xB0, 0x34, 0xEE, 0xF4])

# 32-bit: mov al, 0xfe ; out 0x64, al (i8042 reset) ; hlt
RESET_32 = bytes([0xB0, 0xFE, 0xE6, 0x64, 0xF4])


def bench_out_loop(n: int) -> bytes:
    """16-bit, the C bench loop's guest: mov ecx, n ; L: out 0x10, al ; dec ecx ; jnz L ; then exit 0."""
    return (bytes([0x66, 0xB9]) + n.to_bytes(4, "little") + bytes([0xE6, 0x10, 0x66, 0x49, 0x75, 0xFA])
            + bytes([0xB0, 0x00, 0xE6, 0xF4, 0xF4]))
