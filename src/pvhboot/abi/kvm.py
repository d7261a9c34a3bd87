"""The KVM user-space ABI for x86-64, declared once.

Sources: include/uapi/linux/kvm.h (ioctl numbers, struct kvm_run, memory slots, capabilities, exit
reasons) and arch/x86/include/uapi/asm/kvm.h (kvm_regs, kvm_sregs, kvm_segment, kvm_dtable, kvm_fpu,
kvm_msrs, kvm_cpuid2).  Documentation/virt/kvm/api.rst describes each ioctl.  Pure declarations: the
only code that issues these ioctls is pvhboot.kvm.
"""
from __future__ import annotations

import ctypes
import enum
import functools

from . import check_layout

u8, u16, u32, u64, s32 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int32

# --- include/uapi/asm-generic/ioctl.h: the request number encoding (x86 uses the generic one) ---
_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    assert 0 <= size < (1 << _IOC_SIZEBITS)
    return (direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


def _sz(t) -> int:
    return t if isinstance(t, int) else ctypes.sizeof(t)


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, t) -> int:
    return _IOC(_IOC_READ, type_, nr, _sz(t))


def _IOW(type_: int, nr: int, t) -> int:
    return _IOC(_IOC_WRITE, type_, nr, _sz(t))


def _IOWR(type_: int, nr: int, t) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, _sz(t))


# kvm.h: KVM_API_VERSION; KVM_GET_API_VERSION must return exactly this.
KVM_API_VERSION = 12
KVMIO = 0xAE


# --- linux/kvm.h structures ---
class kvm_userspace_memory_region(ctypes.Structure):
    _fields_ = [
        ("slot", u32),
        ("flags", u32),
        ("guest_phys_addr", u64),
        ("memory_size", u64),  # bytes
        ("userspace_addr", u64),  # start of the user-space allocated memory
    ]


check_layout(kvm_userspace_memory_region, 32, slot=0, flags=4, guest_phys_addr=8, memory_size=16, userspace_addr=24)

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1


class kvm_irq_level(ctypes.Structure):
    # union { __u32 irq; __s32 status; } is represented by ``irq``.
    _fields_ = [("irq", u32), ("level", u32)]


check_layout(kvm_irq_level, 8, irq=0, level=4)


class kvm_pit_config(ctypes.Structure):
    _fields_ = [("flags", u32), ("pad", u32 * 15)]


check_layout(kvm_pit_config, 64, flags=0, pad=4)
KVM_PIT_SPEAKER_DUMMY = 1


class kvm_mp_state(ctypes.Structure):
    _fields_ = [("mp_state", u32)]


check_layout(kvm_mp_state, 4, mp_state=0)


class MpState(enum.IntEnum):
    """kvm.h KVM_MP_STATE_* (not all are valid on x86)."""

    RUNNABLE = 0
    UNINITIALIZED = 1
    INIT_RECEIVED = 2
    HALTED = 3
    SIPI_RECEIVED = 4
    STOPPED = 5
    CHECK_STOP = 6
    OPERATING = 7
    LOAD = 8


class kvm_coalesced_mmio_zone(ctypes.Structure):
    # union { __u32 pad; __u32 pio; }: pio = 1 registers a port-I/O zone (KVM_CAP_COALESCED_PIO).
    _fields_ = [("addr", u64), ("size", u32), ("pio", u32)]


check_layout(kvm_coalesced_mmio_zone, 16, addr=0, size=8, pio=12)


class kvm_ioeventfd(ctypes.Structure):
    """KVM_IOEVENTFD (api.rst 4.59): a guest write to [addr, addr+len) (matching datamatch when
    KVM_IOEVENTFD_FLAG_DATAMATCH) signals the eventfd ``fd`` inside KVM, with no exit to user space."""

    _fields_ = [("datamatch", u64), ("addr", u64), ("len", u32), ("fd", ctypes.c_int32), ("flags", u32),
                ("pad", u8 * 36)]


check_layout(kvm_ioeventfd, 64, datamatch=0, addr=8, len=16, fd=20, flags=24)
KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0  # kvm_ioeventfd_flag_nr_datamatch
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2


class kvm_irqfd(ctypes.Structure):
    """KVM_IRQFD (api.rst 4.75): a write to eventfd ``fd`` injects an edge on ``gsi`` inside KVM."""

    _fields_ = [("fd", u32), ("gsi", u32), ("flags", u32), ("resamplefd", u32), ("pad", u8 * 16)]


check_layout(kvm_irqfd, 32, fd=0, gsi=4, flags=8, resamplefd=12)
KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
KVM_IRQFD_FLAG_RESAMPLE = 1 << 1


class kvm_coalesced_mmio(ctypes.Structure):
    _fields_ = [("phys_addr", u64), ("len", u32), ("pio", u32), ("data", u8 * 8)]


check_layout(kvm_coalesced_mmio, 24, phys_addr=0, len=8, pio=12, data=16)


class kvm_coalesced_mmio_ring(ctypes.Structure):
    # followed by struct kvm_coalesced_mmio coalesced_mmio[] up to the end of the page
    _fields_ = [("first", u32), ("last", u32)]


check_layout(kvm_coalesced_mmio_ring, 8, first=0, last=4)
# arch/x86/include/uapi/asm/kvm.h: pages into the vCPU mmap after kvm_run (page 0): the port-I/O
# data page (kvm_run.io.data_offset points there) and the coalesced MMIO/PIO ring.
KVM_PIO_PAGE_OFFSET = 1
KVM_COALESCED_MMIO_PAGE_OFFSET = 2


def kvm_coalesced_mmio_max(page_size: int = 4096) -> int:
    """kvm.h KVM_COALESCED_MMIO_MAX: entries that fit in the ring page."""
    return (page_size - ctypes.sizeof(kvm_coalesced_mmio_ring)) // ctypes.sizeof(kvm_coalesced_mmio)


class kvm_translation(ctypes.Structure):
    """for KVM_TRANSLATE: guest linear -> guest physical through the vCPU's current paging."""

    _fields_ = [("linear_address", u64), ("physical_address", u64), ("valid", u8), ("writeable", u8),
                ("usermode", u8), ("pad", u8 * 5)]


check_layout(kvm_translation, 24, linear_address=0, physical_address=8, valid=16, writeable=17, usermode=18)


# --- struct kvm_run (kvm.h), the page shared with each vCPU (mmap of the vCPU fd at offset 0) ---
class kvm_run_hw(ctypes.Structure):  # KVM_EXIT_UNKNOWN
    _fields_ = [("hardware_exit_reason", u64)]


class kvm_run_fail_entry(ctypes.Structure):  # KVM_EXIT_FAIL_ENTRY
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class kvm_run_ex(ctypes.Structure):  # KVM_EXIT_EXCEPTION
    _fields_ = [("exception", u32), ("error_code", u32)]


class kvm_run_io(ctypes.Structure):  # KVM_EXIT_IO
    _fields_ = [
        ("direction", u8),  # KVM_EXIT_IO_IN / KVM_EXIT_IO_OUT
        ("size", u8),  # bytes
        ("port", u16),
        ("count", u32),
        ("data_offset", u64),  # relative to kvm_run start
    ]


class kvm_run_mmio(ctypes.Structure):  # KVM_EXIT_MMIO
    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class kvm_run_internal(ctypes.Structure):  # KVM_EXIT_INTERNAL_ERROR
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]  # ndata: KVM_CAP_INTERNAL_ERROR_DATA


class kvm_run_system_event(ctypes.Structure):  # KVM_EXIT_SYSTEM_EVENT
    # union { __u64 flags; __u64 data[16]; } after ``ndata`` (older headers: only ``flags``).
    _fields_ = [("type", u32), ("ndata", u32), ("data", u64 * 16)]


class kvm_debug_exit_arch(ctypes.Structure):  # KVM_EXIT_DEBUG (asm/kvm.h, x86)
    _fields_ = [("exception", u32), ("pad", u32), ("pc", u64), ("dr6", u64), ("dr7", u64)]


check_layout(kvm_debug_exit_arch, 32, exception=0, pad=4, pc=8, dr6=16, dr7=24)


class kvm_run_exit_union(ctypes.Union):
    _fields_ = [
        ("hw", kvm_run_hw),
        ("fail_entry", kvm_run_fail_entry),
        ("ex", kvm_run_ex),
        ("io", kvm_run_io),
        ("debug", kvm_debug_exit_arch),  # struct { struct kvm_debug_exit_arch arch; } debug
        ("mmio", kvm_run_mmio),
        ("internal", kvm_run_internal),
        ("system_event", kvm_run_system_event),
        ("padding", ctypes.c_char * 256),  # "Fix the size of the union."
    ]


class kvm_run(ctypes.Structure):
    _fields_ = [
        ("request_interrupt_window", u8),  # in
        ("immediate_exit", u8),  # in: KVM_RUN returns -EINTR at once when set
        ("padding1", u8 * 6),
        ("exit_reason", u32),  # out
        ("ready_for_interrupt_injection", u8),
        ("if_flag", u8),
        ("flags", u16),
        ("cr8", u64),  # in (pre_kvm_run), out (post_kvm_run)
        ("apic_base", u64),
        ("u", kvm_run_exit_union),
        ("kvm_valid_regs", u64),
        ("kvm_dirty_regs", u64),
        ("s", ctypes.c_char * 2048),  # union { struct kvm_sync_regs regs; char padding[2048]; }
    ]


check_layout(
    kvm_run, 2352, request_interrupt_window=0, immediate_exit=1, exit_reason=8,
    ready_for_interrupt_injection=12, if_flag=13, flags=14, cr8=16, apic_base=24, u=32,
    kvm_valid_regs=288, kvm_dirty_regs=296, s=304,
)
check_layout(kvm_run_io, 16, direction=0, size=1, port=2, count=4, data_offset=8)
check_layout(kvm_run_mmio, 24, phys_addr=0, data=8, len=16, is_write=20)
check_layout(kvm_run_internal, 136, suberror=0, ndata=4, data=8)
check_layout(kvm_run_fail_entry, 16, hardware_entry_failure_reason=0, cpu=8)
check_layout(kvm_run_system_event, 136, type=0, ndata=4, data=8)
check_layout(kvm_run_exit_union, 256)

# Byte offsets into kvm_run for struct.unpack_from on the mapped page (the run loop's hot path).
KVM_RUN_IMMEDIATE_EXIT = kvm_run.immediate_exit.offset
KVM_RUN_EXIT_REASON = kvm_run.exit_reason.offset
KVM_RUN_EXIT_UNION = kvm_run.u.offset

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1


class KvmExit(enum.IntEnum):
    """kvm.h KVM_EXIT_*: kvm_run.exit_reason."""

    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    IRQ_WINDOW_OPEN = 7
    SHUTDOWN = 8
    FAIL_ENTRY = 9
    INTR = 10
    SET_TPR = 11
    TPR_ACCESS = 12
    S390_SIEIC = 13
    S390_RESET = 14
    DCR = 15
    NMI = 16
    INTERNAL_ERROR = 17
    OSI = 18
    PAPR_HCALL = 19
    S390_UCONTROL = 20
    WATCHDOG = 21
    S390_TSCH = 22
    EPR = 23
    SYSTEM_EVENT = 24
    S390_STSI = 25
    IOAPIC_EOI = 26
    HYPERV = 27
    ARM_NISV = 28
    X86_RDMSR = 29
    X86_WRMSR = 30
    DIRTY_RING_FULL = 31
    AP_RESET_HOLD = 32
    X86_BUS_LOCK = 33
    XEN = 34
    RISCV_SBI = 35
    RISCV_CSR = 36
    NOTIFY = 37
    LOONGARCH_IOCSR = 38
    MEMORY_FAULT = 39


class KvmInternalError(enum.IntEnum):
    """kvm.h KVM_INTERNAL_ERROR_*: kvm_run.internal.suberror."""

    EMULATION = 1  # "Emulate instruction failed."
    SIMUL_EX = 2  # "Encounter unexpected simultaneous exceptions."
    DELIVERY_EV = 3  # "Encounter unexpected vm-exit due to delivery event."
    UNEXPECTED_EXIT_REASON = 4


class KvmSystemEvent(enum.IntEnum):
    """kvm.h KVM_SYSTEM_EVENT_*: kvm_run.system_event.type."""

    SHUTDOWN = 1
    RESET = 2
    CRASH = 3
    WAKEUP = 4
    SUSPEND = 5
    SEV_TERM = 6


class KvmCap(enum.IntEnum):
    """kvm.h KVM_CAP_* (the ones pvhboot asks about)."""

    IRQCHIP = 0
    HLT = 1
    USER_MEMORY = 3
    SET_TSS_ADDR = 4
    EXT_CPUID = 7
    NR_VCPUS = 9
    NR_MEMSLOTS = 10
    PIT = 11
    MP_STATE = 14
    COALESCED_MMIO = 15
    SYNC_MMU = 16
    SET_GUEST_DEBUG = 23
    IRQ_ROUTING = 25
    IRQ_INJECT_STATUS = 26
    IRQFD = 32
    PIT2 = 33
    PIT_STATE2 = 35
    IOEVENTFD = 36
    SET_IDENTITY_MAP_ADDR = 37
    INTERNAL_ERROR_DATA = 40
    VCPU_EVENTS = 41
    XSAVE = 55
    XCRS = 56
    GET_TSC_KHZ = 61
    MAX_VCPUS = 66
    READONLY_MEM = 81
    SPLIT_IRQCHIP = 121
    X2APIC_API = 129
    IMMEDIATE_EXIT = 136
    COALESCED_PIO = 162
    SET_GUEST_DEBUG2 = 195  # the KVM_GUESTDBG_* control bits this KVM accepts


# --- arch/x86/include/uapi/asm/kvm.h structures ---
class kvm_regs(ctypes.Structure):
    _fields_ = [(n, u64) for n in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags",
    )]


check_layout(kvm_regs, 144, rax=0, rbx=8, rsi=32, rsp=48, r8=64, r15=120, rip=128, rflags=136)


class kvm_segment(ctypes.Structure):
    _fields_ = [
        ("base", u64), ("limit", u32), ("selector", u16), ("type", u8), ("present", u8), ("dpl", u8),
        ("db", u8), ("s", u8), ("l", u8), ("g", u8), ("avl", u8), ("unusable", u8), ("padding", u8),
    ]


check_layout(kvm_segment, 24, base=0, limit=8, selector=12, type=14, present=15, dpl=16, db=17, s=18,
             l=19, g=20, avl=21, unusable=22, padding=23)


class kvm_dtable(ctypes.Structure):
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


check_layout(kvm_dtable, 16, base=0, limit=8, padding=10)

# asm/kvm.h: KVM_NR_INTERRUPTS 256; interrupt_bitmap is (KVM_NR_INTERRUPTS + 63) / 64 u64s.
KVM_NR_INTERRUPTS = 256


class kvm_sregs(ctypes.Structure):
    _fields_ = [
        ("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment), ("fs", kvm_segment),
        ("gs", kvm_segment), ("ss", kvm_segment), ("tr", kvm_segment), ("ldt", kvm_segment),
        ("gdt", kvm_dtable), ("idt", kvm_dtable),
        ("cr0", u64), ("cr2", u64), ("cr3", u64), ("cr4", u64), ("cr8", u64), ("efer", u64),
        ("apic_base", u64),
        ("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


check_layout(kvm_sregs, 312, cs=0, ds=24, ss=120, tr=144, ldt=168, gdt=192, idt=208, cr0=224, cr2=232,
             cr3=240, cr4=248, cr8=256, efer=264, apic_base=272, interrupt_bitmap=280)


class kvm_fpu(ctypes.Structure):
    _fields_ = [
        ("fpr", (u8 * 16) * 8), ("fcw", u16), ("fsw", u16), ("ftwx", u8), ("pad1", u8),
        ("last_opcode", u16), ("last_ip", u64), ("last_dp", u64), ("xmm", (u8 * 16) * 16),
        ("mxcsr", u32), ("pad2", u32),
    ]


check_layout(kvm_fpu, 416, fpr=0, fcw=128, fsw=130, ftwx=132, last_opcode=134, last_ip=136, last_dp=144,
             xmm=152, mxcsr=408)


class kvm_msr_entry(ctypes.Structure):
    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


check_layout(kvm_msr_entry, 16, index=0, reserved=4, data=8)


class kvm_msrs(ctypes.Structure):
    """Header only; the entries follow (see :func:`kvm_msrs_with`)."""

    _fields_ = [("nmsrs", u32), ("pad", u32)]


check_layout(kvm_msrs, 8, nmsrs=0, pad=4)


class kvm_cpuid_entry2(ctypes.Structure):
    _fields_ = [
        ("function", u32), ("index", u32), ("flags", u32),
        ("eax", u32), ("ebx", u32), ("ecx", u32), ("edx", u32), ("padding", u32 * 3),
    ]


check_layout(kvm_cpuid_entry2, 40, function=0, index=4, flags=8, eax=12, ebx=16, ecx=20, edx=24, padding=28)

# asm/kvm.h kvm_cpuid_entry2.flags
KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0  # sic: the header's spelling


class kvm_cpuid2(ctypes.Structure):
    """Header only; the entries follow (see :func:`kvm_cpuid2_with`)."""

    _fields_ = [("nent", u32), ("padding", u32)]


check_layout(kvm_cpuid2, 8, nent=0, padding=4)


@functools.cache
def kvm_cpuid2_with(n: int) -> type[ctypes.Structure]:
    """struct kvm_cpuid2 followed by ``n`` entries (the flexible array member made concrete)."""
    return type(f"kvm_cpuid2_{n}", (ctypes.Structure,), {
        "_fields_": [("nent", u32), ("padding", u32), ("entries", kvm_cpuid_entry2 * n)]})


@functools.cache
def kvm_msrs_with(n: int) -> type[ctypes.Structure]:
    """struct kvm_msrs followed by ``n`` entries."""
    return type(f"kvm_msrs_{n}", (ctypes.Structure,), {
        "_fields_": [("nmsrs", u32), ("pad", u32), ("entries", kvm_msr_entry * n)]})


class kvm_guest_debug_arch(ctypes.Structure):
    """asm/kvm.h: DR0-DR3 addresses, DR6, DR7 (debugreg[4], [5] unused) while USE_HW_BP is set."""

    _fields_ = [("debugreg", u64 * 8)]


class kvm_guest_debug(ctypes.Structure):
    """kvm.h, for KVM_SET_GUEST_DEBUG (api.rst 4.61)."""

    _fields_ = [("control", u32), ("pad", u32), ("arch", kvm_guest_debug_arch)]


check_layout(kvm_guest_debug, 72, control=0, pad=4, arch=8)

class kvm_vcpu_events_exception(ctypes.Structure):
    _fields_ = [("injected", u8), ("nr", u8), ("has_error_code", u8), ("pending", u8), ("error_code", u32)]


class kvm_vcpu_events(ctypes.Structure):
    """asm/kvm.h, for KVM_GET/SET_VCPU_EVENTS (api.rst 4.31): the exception, interrupt and NMI KVM has
    pending or in flight for a vCPU.  The gdb stub clears the #UD KVM queues with an emulation failure
    it reports to user space (x86.c handle_emulation_failure) when that failure is one of its traps."""

    _fields_ = [("exception", kvm_vcpu_events_exception),
                ("interrupt", u8 * 4),  # injected, nr, soft, shadow
                ("nmi", u8 * 4),  # injected, pending, masked, pad
                ("sipi_vector", u32), ("flags", u32),
                ("smi", u8 * 4),  # smm, pending, smm_inside_nmi, latched_init
                ("triple_fault_pending", u8), ("reserved", u8 * 26),
                ("exception_has_payload", u8), ("exception_payload", u64)]


check_layout(kvm_vcpu_events, 64, exception=0, interrupt=8, nmi=12, sipi_vector=16, flags=20, smi=24,
             triple_fault_pending=28, exception_has_payload=55, exception_payload=56)

# kvm.h KVM_GUESTDBG_ENABLE/SINGLESTEP and asm/kvm.h (x86) KVM_GUESTDBG_USE_* / INJECT_* / BLOCKIRQ
KVM_GUESTDBG_ENABLE = 0x00000001
KVM_GUESTDBG_SINGLESTEP = 0x00000002
KVM_GUESTDBG_USE_SW_BP = 0x00010000  # #BP (int3) exits to user space
KVM_GUESTDBG_USE_HW_BP = 0x00020000  # debugreg[] replace the guest's DR0-3/DR7; #DB exits
KVM_GUESTDBG_INJECT_DB = 0x00040000  # deliver a #DB to the guest on the next entry
KVM_GUESTDBG_INJECT_BP = 0x00080000  # deliver a #BP to the guest on the next entry
KVM_GUESTDBG_BLOCKIRQ = 0x00100000  # no interrupt injection while single-stepping

# --- ioctl numbers (kvm.h) ---
# system ioctls (on the /dev/kvm fd)
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, kvm_msrs)  # struct kvm_msr_list: same 8-byte header
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, kvm_cpuid2)
# VM ioctls
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)
KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, u64)
KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60)
KVM_IRQ_LINE = _IOW(KVMIO, 0x61, kvm_irq_level)
KVM_IRQ_LINE_STATUS = _IOWR(KVMIO, 0x67, kvm_irq_level)
KVM_REGISTER_COALESCED_MMIO = _IOW(KVMIO, 0x67, kvm_coalesced_mmio_zone)
KVM_UNREGISTER_COALESCED_MMIO = _IOW(KVMIO, 0x68, kvm_coalesced_mmio_zone)
KVM_IRQFD = _IOW(KVMIO, 0x76, kvm_irqfd)
KVM_CREATE_PIT2 = _IOW(KVMIO, 0x77, kvm_pit_config)
KVM_IOEVENTFD = _IOW(KVMIO, 0x79, kvm_ioeventfd)
# vCPU ioctls
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, kvm_regs)
KVM_SET_REGS = _IOW(KVMIO, 0x82, kvm_regs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, kvm_sregs)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, kvm_sregs)
KVM_TRANSLATE = _IOWR(KVMIO, 0x85, kvm_translation)
KVM_GET_MSRS = _IOWR(KVMIO, 0x88, kvm_msrs)
KVM_SET_MSRS = _IOW(KVMIO, 0x89, kvm_msrs)
KVM_GET_FPU = _IOR(KVMIO, 0x8C, kvm_fpu)
KVM_SET_FPU = _IOW(KVMIO, 0x8D, kvm_fpu)
KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, kvm_cpuid2)
KVM_GET_CPUID2 = _IOWR(KVMIO, 0x91, kvm_cpuid2)
KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, kvm_mp_state)
KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, kvm_mp_state)
KVM_SET_GUEST_DEBUG = _IOW(KVMIO, 0x9B, kvm_guest_debug)
KVM_GET_VCPU_EVENTS = _IOR(KVMIO, 0x9F, kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = _IOW(KVMIO, 0xA0, kvm_vcpu_events)


# --- MSR indices (arch/x86/include/asm/msr-index.h) that a VMM sets before boot ---
MSR_IA32_TSC = 0x10
MSR_IA32_APICBASE = 0x1B
MSR_IA32_SYSENTER_CS = 0x174
MSR_IA32_SYSENTER_ESP = 0x175
MSR_IA32_SYSENTER_EIP = 0x176
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_IA32_MISC_ENABLE_FAST_STRING = 1 << 0  # MSR_IA32_MISC_ENABLE_FAST_STRING_BIT 0
MSR_MTRRdefType = 0x2FF
MSR_MTRR_DEF_TYPE_E = 1 << 11  # IA32_MTRR_DEF_TYPE.E: MTRRs enabled (SDM Vol. 3A 11.11.2.1)
MTRR_TYPE_WRBACK = 6
MSR_EFER = 0xC0000080
MSR_STAR = 0xC0000081
MSR_LSTAR = 0xC0000082
MSR_CSTAR = 0xC0000083
MSR_SYSCALL_MASK = 0xC0000084
MSR_KERNEL_GS_BASE = 0xC0000102
