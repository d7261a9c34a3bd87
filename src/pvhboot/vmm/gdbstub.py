"""A GDB Remote Serial Protocol server for the guest (``pvhboot boot --gdb [HOST:]PORT``).

The protocol is the one in gdb's manual, "Remote Protocol" (Overview, Packets, Stop Reply Packets,
General Query Packets, Target Descriptions).  What this stub does, and why:

- **One 64-bit register file at every moment.**  The target description (``target.xml``, served with
  ``qXfer:features:read``) is x86-64 from the first instruction on: gdb's standard features
  ``org.gnu.gdb.i386.core`` / ``.sse`` / ``.segments`` (register names and order of gdb's
  features/i386/64bit-*.xml) plus ``org.pvhboot.x86.sys`` with cr0 cr2 cr3 cr4 cr8 efer (gdb has no
  standard feature for them; extra registers in a description become ``$cr0`` etc.).  In the 32-bit
  PVH phase the upper halves are simply 0, so ``break *PHYS32_ENTRY``, ``stepi`` through the long-mode
  switch and ``break start_kernel`` work in one session ("Remote 'g' packet reply is too long", QEMU's
  known pain at the mode switch, cannot happen).  32-bit code reads best with
  ``set disassembler-options i386`` (``x/10i $pc``), which changes only the disassembler.
- **vCPU ioctls stay on the vCPU's own thread** (platform.md).  All-stop: when one vCPU stops
  (KVM_EXIT_DEBUG) or gdb sends Ctrl-C, every vCPU thread is kicked out of KVM_RUN and *parks* in
  :meth:`GdbStub.park`; the stub thread (the one talking to gdb) then asks a parked vCPU for its
  registers or a KVM_TRANSLATE through that vCPU's small command queue, and resumes them all with a
  per-vCPU action (continue / step) that the vCPU thread applies itself with KVM_SET_GUEST_DEBUG.
  The run loop calls :meth:`GdbStub.on_kick` and :meth:`GdbStub.on_debug_exit` (``VmControl.debug``).
- **Breakpoints.**  ``Z1``, ``Z2``-``Z4`` use the four debug registers shared by all vCPUs
  (KVM_GUESTDBG_USE_HW_BP; an error reply when all four are taken).  ``Z0`` writes ``int3`` into guest
  memory (KVM_GUESTDBG_USE_SW_BP) where that works, and falls back to a debug register when it does
  not: always on kvm_pvm, whose #BP never reaches user space (platform.md), and for an address the
  vCPU cannot translate yet (``break start_kernel`` while paging is still off).  The stop reply says
  ``swbreak`` for a ``Z0`` hit either way, ``hwbreak`` for ``Z1``, ``watch``/``rwatch``/``awatch:ADDR``.
  A #BP or #DB that is not ours is given back to the guest (KVM_GUESTDBG_INJECT_BP / _DB).
- **Page traps**, where neither breakpoint kind reaches KVM (a KVM nested under QEMU's TCG: the rig;
  ``monitor swbreak pagetrap`` anywhere).  A breakpoint's 4 KiB guest page is taken out of the memory
  slots while the guest runs (:meth:`pvhboot.kvm.Vm.set_ram_holes`).  An instruction fetch from it
  cannot be emulated, so KVM stops with KVM_EXIT_INTERNAL_ERROR (EMULATION) at that instruction,
  and queues a #UD that the stub takes back (KVM_SET_VCPU_EVENTS).  At a breakpoint address that is a
  stop.  Anywhere else in the page, the page goes back in and that vCPU alone runs single-stepped
  (the others are parked) until it leaves the page or reaches a breakpoint.  Data accesses to the page
  exit as MMIO and are served from guest RAM (:class:`RamWindow`).  An address the vCPU cannot
  translate yet (``break start_kernel`` at the 32-bit entry) is placed where the kernel's ELF
  program headers loaded it.
- **Memory** (``m``/``M``/``X``) is guest-virtual, translated page by page through the selected vCPU's
  current paging (KVM_TRANSLATE, which is the identity while paging is off); ``int3`` bytes the stub
  wrote are shown as the original bytes.
- **Hostile clients.**  Bad checksum -> ``-``; a packet longer than the buffer -> disconnect; unknown
  packet -> empty reply; malformed arguments -> ``E16``.  A client that goes away (EOF, reset, bad
  framing) is treated as ``D``: breakpoints removed, the guest runs on, and the listener accepts a new
  client (which stops the guest again).  ``k`` ends the VM (reason "quit", exit 0).
"""
from __future__ import annotations

import collections
import errno
import os
import select
import socket
import sys
import threading
import weakref

from ..abi import kvm as abi
from ..errors import ConfigError
from .config import check_gdb_address

# --- the packet layer (pure; unit-tested over a socketpair) ---------------------------------------------

PACKET_SIZE = 0x4000  # advertised PacketSize: the largest packet gdb may send, and our buffer bound
MAX_REPLY_DATA = (PACKET_SIZE - 16) // 2  # bytes per m reply (2 hex digits each)
INTERRUPT = 0x03  # Ctrl-C from gdb, outside any packet
_ESCAPED = b"#$}*"


class ProtocolError(Exception):
    """The client broke the framing beyond repair (e.g. a packet longer than PacketSize): disconnect."""


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def frame(payload: bytes) -> bytes:
    """``$payload#cc`` (payload already escaped where binary; replies never use run-length encoding)."""
    return b"$" + payload + b"#" + b"%02x" % checksum(payload)


def escape_binary(data: bytes) -> bytes:
    """Binary data in a reply (qXfer): ``}`` followed by the byte xor 0x20 for ``#$}*``."""
    out = bytearray()
    for b in data:
        if b in _ESCAPED:
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape_binary(data: bytes) -> bytes:
    """The inverse, for the ``X`` packet's data."""
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == 0x7D:
            nxt = next(it, None)
            if nxt is None:
                raise ValueError("escape character at the end of the data")
            out.append(nxt ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


class PacketReader:
    """Bytes from the client in, events out: ``("packet", payload)`` (checksum good), ``("bad", payload)``
    (checksum wrong: answer ``-``), ``("ack",)``, ``("nak",)``, ``("interrupt",)``.  The buffer never
    holds more than ``limit`` bytes of one packet: a longer one raises :class:`ProtocolError`."""

    def __init__(self, limit: int = PACKET_SIZE) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._state = 0  # 0: between packets, 1: in a packet, 2/3: checksum digit 1/2
        self._sum = b""

    def feed(self, data: bytes) -> list[tuple]:
        events: list[tuple] = []
        for b in data:
            st = self._state
            if st == 0:
                if b == 0x24:  # '$'
                    self._state, self._buf = 1, bytearray()
                elif b == 0x2B:
                    events.append(("ack",))
                elif b == 0x2D:
                    events.append(("nak",))
                elif b == INTERRUPT:
                    events.append(("interrupt",))
                # anything else between packets is noise: ignored, as gdbserver does
            elif st == 1:
                if b == 0x23:  # '#'
                    self._state, self._sum = 2, b""
                else:
                    if len(self._buf) >= self.limit:
                        raise ProtocolError(f"packet longer than {self.limit} bytes")
                    self._buf.append(b)
            else:
                self._sum += bytes((b,))
                if st == 2:
                    self._state = 3
                    continue
                self._state = 0
                payload = bytes(self._buf)
                self._buf = bytearray()
                try:
                    good = int(self._sum, 16) == checksum(payload)
                except ValueError:
                    good = False
                events.append(("packet" if good else "bad", payload))
        return events


# --- the target description and register file ----------------------------------------------------------

_EFLAGS_FLAGS = ((0, "CF"), (1, ""), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"),
                 (10, "DF"), (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"), (18, "AC"), (19, "VIF"),
                 (20, "VIP"), (21, "ID"))
_MXCSR_FLAGS = ((0, "IE"), (1, "DE"), (2, "ZE"), (3, "OE"), (4, "UE"), (5, "PE"), (6, "DAZ"), (7, "IM"),
                (8, "DM"), (9, "ZM"), (10, "OM"), (11, "UM"), (12, "PM"), (15, "FZ"))
_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_SEGS = ("cs", "ss", "ds", "es", "fs", "gs")  # gdb's order
_FPU_CTRL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")
_SYS = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")


class Reg:
    """One register of the description: name, size in bits, and where its value lives in
    (kvm_regs, kvm_sregs, kvm_fpu)."""

    __slots__ = ("name", "bits", "feature", "xml", "source")

    def __init__(self, name: str, bits: int, feature: str, xml: str, source: str) -> None:
        self.name, self.bits, self.feature, self.xml, self.source = name, bits, feature, xml, source

    @property
    def size(self) -> int:
        return self.bits // 8


def _build_registers() -> list[Reg]:
    core, sse, seg, sys_ = ("org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse", "org.gnu.gdb.i386.segments",
                            "org.pvhboot.x86.sys")
    regs = []
    for n in _GPRS:
        t = "data_ptr" if n in ("rbp", "rsp") else "int64"
        regs.append(Reg(n, 64, core, f'type="{t}"', "regs"))
    regs.append(Reg("rip", 64, core, 'type="code_ptr"', "regs"))
    regs.append(Reg("eflags", 32, core, 'type="i386_eflags"', "regs"))
    for n in _SEGS:
        regs.append(Reg(n, 32, core, 'type="int32"', "sregs"))
    for i in range(8):
        regs.append(Reg(f"st{i}", 80, core, 'type="i387_ext"', "fpu"))
    for n in _FPU_CTRL:
        regs.append(Reg(n, 32, core, 'type="int" group="float"', "fpu"))
    for i in range(16):
        regs.append(Reg(f"xmm{i}", 128, sse, 'type="vec128"', "fpu"))
    regs.append(Reg("mxcsr", 32, sse, 'type="i386_mxcsr" group="vector"', "fpu"))
    regs.append(Reg("fs_base", 64, seg, 'type="int"', "sregs"))
    regs.append(Reg("gs_base", 64, seg, 'type="int"', "sregs"))
    for n in _SYS:
        regs.append(Reg(n, 64, sys_, 'type="code_ptr"' if n == "cr3" else 'type="int64" group="system"', "sregs"))
    return regs


REGISTERS = _build_registers()
REG_INDEX = {r.name: i for i, r in enumerate(REGISTERS)}
RIP, RSP, RBP = REG_INDEX["rip"], REG_INDEX["rsp"], REG_INDEX["rbp"]
G_SIZE = sum(r.size for r in REGISTERS)


def _flags_xml(ident: str, size: int, fields) -> str:
    body = "".join(f'<field name="{n}" start="{b}" end="{b}"/>' for b, n in fields)
    return f'<flags id="{ident}" size="{size}">{body}</flags>'


def target_xml() -> bytes:
    """gdb's Target Description Format: architecture i386:x86-64, one <feature> per group."""
    parts = ['<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd">'
             "<target><architecture>i386:x86-64</architecture>"]
    feature = None
    for r in REGISTERS:
        if r.feature != feature:
            if feature is not None:
                parts.append("</feature>")
            feature = r.feature
            parts.append(f'<feature name="{feature}">')
            if feature.endswith(".core"):
                parts.append(_flags_xml("i386_eflags", 4, _EFLAGS_FLAGS))
            elif feature.endswith(".sse"):
                parts.append('<vector id="v4f" type="ieee_single" count="4"/>'
                             '<vector id="v2d" type="ieee_double" count="2"/>'
                             '<vector id="v16i8" type="int8" count="16"/>'
                             '<vector id="v8i16" type="int16" count="8"/>'
                             '<vector id="v4i32" type="int32" count="4"/>'
                             '<vector id="v2i64" type="int64" count="2"/>'
                             '<union id="vec128"><field name="v4_float" type="v4f"/>'
                             '<field name="v2_double" type="v2d"/><field name="v16_int8" type="v16i8"/>'
                             '<field name="v8_int16" type="v8i16"/><field name="v4_int32" type="v4i32"/>'
                             '<field name="v2_int64" type="v2i64"/><field name="uint128" type="uint128"/>'
                             "</union>")
                parts.append(_flags_xml("i386_mxcsr", 4, _MXCSR_FLAGS))
        parts.append(f'<reg name="{r.name}" bitsize="{r.bits}" {r.xml}/>')
    parts.append("</feature></target>")
    return "".join(parts).encode()


class RegisterState:
    """A parked vCPU's (kvm_regs, kvm_sregs, kvm_fpu) seen as gdb's register file."""

    def __init__(self, regs: abi.kvm_regs, sregs: abi.kvm_sregs, fpu: abi.kvm_fpu) -> None:
        self.regs, self.sregs, self.fpu = regs, sregs, fpu

    def get(self, n: int) -> bytes:
        r = REGISTERS[n]
        name = r.name
        if r.source == "regs":
            value = self.regs.rflags & 0xFFFFFFFF if name == "eflags" else getattr(self.regs, name)
        elif r.source == "sregs":
            if name in _SEGS:
                value = getattr(self.sregs, name).selector
            elif name in ("fs_base", "gs_base"):
                value = getattr(self.sregs, name[:2]).base
            else:
                value = getattr(self.sregs, name)
        else:
            return self._get_fpu(name, r.size)
        return value.to_bytes(r.size, "little")

    def _get_fpu(self, name: str, size: int) -> bytes:
        f = self.fpu
        if name.startswith("st"):
            return bytes(f.fpr[int(name[2:])])[:10]
        if name.startswith("xmm"):
            return bytes(f.xmm[int(name[3:])])
        value = {
            "fctrl": f.fcw, "fstat": f.fsw, "ftag": _full_tag_word(f.ftwx), "fiseg": 0,
            "fioff": f.last_ip & 0xFFFFFFFF, "foseg": 0, "fooff": f.last_dp & 0xFFFFFFFF,
            "fop": f.last_opcode, "mxcsr": f.mxcsr,
        }[name]
        return value.to_bytes(size, "little")

    def set(self, n: int, data: bytes) -> str:
        """Write register ``n``; returns which structure changed ("regs", "sregs", "fpu", or "" for
        none).  Raises ValueError for a change the stub refuses (a segment selector: only KVM's
        descriptor cache would change, not the segment)."""
        r = REGISTERS[n]
        if len(data) != r.size:
            raise ValueError("wrong register size")
        if data == self.get(n):
            return ""
        value = int.from_bytes(data, "little")
        name = r.name
        if r.source == "regs":
            if name == "eflags":
                self.regs.rflags = (self.regs.rflags & ~0xFFFFFFFF) | value | 0x2
            else:
                setattr(self.regs, name, value)
            return "regs"
        if r.source == "sregs":
            if name in _SEGS:
                raise ValueError(f"{name} cannot be changed from the debugger")
            if name in ("fs_base", "gs_base"):
                getattr(self.sregs, name[:2]).base = value
            else:
                setattr(self.sregs, name, value)
            return "sregs"
        f = self.fpu
        if name.startswith("st"):
            i = int(name[2:])
            ctypes_bytes = bytearray(bytes(f.fpr[i]))
            ctypes_bytes[:10] = data
            f.fpr[i] = type(f.fpr[i]).from_buffer_copy(ctypes_bytes)
        elif name.startswith("xmm"):
            i = int(name[3:])
            f.xmm[i] = type(f.xmm[i]).from_buffer_copy(data)
        elif name == "fctrl":
            f.fcw = value
        elif name == "fstat":
            f.fsw = value
        elif name == "ftag":
            f.ftwx = _abridged_tag(value)
        elif name == "fioff":
            f.last_ip = value
        elif name == "fooff":
            f.last_dp = value
        elif name == "fop":
            f.last_opcode = value
        elif name == "mxcsr":
            f.mxcsr = value
        else:  # fiseg, foseg: not kept by KVM in 64-bit FXSAVE format
            return ""
        return "fpu"

    def all(self) -> bytes:
        return b"".join(self.get(n) for n in range(len(REGISTERS)))


def _full_tag_word(abridged: int) -> int:
    """FXSAVE's abridged tag (1 bit per register: valid) -> the x87 tag word gdb shows (2 bits:
    00 valid, 11 empty; SDM Vol. 1 10.5.1.1)."""
    return sum((0 if abridged >> i & 1 else 3) << (2 * i) for i in range(8))


def _abridged_tag(full: int) -> int:
    return sum((1 if (full >> (2 * i)) & 3 != 3 else 0) << i for i in range(8))


# --- breakpoints in the debug registers (SDM Vol. 3B 17.2) -----------------------------------------------

NUM_DEBUG_REGS = 4
DR6_BS = 1 << 14  # single step
DR7_GE_LE = 0x600  # GE|LE ("exact" data breakpoints; KVM and QEMU set them)
_DR7_RW = {"exec": 0b00, "watch": 0b01, "rwatch": 0b11, "awatch": 0b11}  # no read-only kind on x86
_DR7_LEN = {1: 0b00, 2: 0b01, 4: 0b11, 8: 0b10}
_Z_KIND = {0: "sw", 1: "hw", 2: "watch", 3: "rwatch", 4: "awatch"}
_BREAK_REASON = {"sw": "swbreak", "hw": "hwbreak"}  # the stop reply's name for a Z0 / Z1 hit


class DebugSlot:
    __slots__ = ("addr", "length", "kind", "report_addr")

    def __init__(self, addr: int, length: int, kind: str, report_addr: int) -> None:
        self.addr, self.length, self.kind, self.report_addr = addr, length, kind, report_addr


def split_watch(addr: int, length: int) -> list[tuple[int, int]]:
    """A watched range as aligned (addr, len) pieces the debug registers can hold (len 1/2/4/8,
    naturally aligned), as gdb's x86 native code splits them."""
    pieces = []
    while length > 0:
        size = next(s for s in (8, 4, 2, 1) if addr % s == 0 and s <= length)
        pieces.append((addr, size))
        addr += size
        length -= size
    return pieces


def debugregs(slots: list[DebugSlot | None]) -> tuple[int, ...]:
    """(DR0..DR3, DR4, DR5, DR6, DR7) for kvm_guest_debug_arch."""
    dr = [0] * 8
    dr7 = 0
    for i, s in enumerate(slots):
        if s is None:
            continue
        dr[i] = s.addr
        rw = _DR7_RW["exec" if s.kind in ("sw", "hw") else s.kind]
        ln = 0 if rw == 0 else _DR7_LEN[s.length]
        dr7 |= (2 << (2 * i)) | (rw << (16 + 4 * i)) | (ln << (18 + 4 * i))  # G bit, R/W, LEN
    if dr7:
        dr7 |= DR7_GE_LE
    dr[7] = dr7
    return tuple(dr)


# --- the stub ----------------------------------------------------------------------------------------

def int3_unusable_reason(on_kvm_pvm: bool, cpuinfo: str | None = None) -> str | None:
    """Why an ``int3`` in guest memory would never reach this VMM as KVM_EXIT_DEBUG, or None.

    kvm_pvm: its emulator delivers #BP to the guest (platform.md).  A KVM that itself runs nested
    under QEMU's TCG (the nested rig: ``-cpu max`` names itself "QEMU TCG CPU"): TCG checks only the
    INTn intercept for ``int3``, not the #BP exception intercept KVM sets for KVM_GUESTDBG_USE_SW_BP,
    so the guest takes its own #BP (seen: a triple fault at the PVH entry)."""
    if on_kvm_pvm:
        return "kvm_pvm does not report int3 to the VMM"
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read(8192)
        except OSError:
            cpuinfo = ""
    if "QEMU TCG CPU" in cpuinfo:
        return "KVM nested under QEMU TCG: its int3 never reaches KVM"
    return None


MONITOR_HELP = ("monitor disas [ADDR [N]]  disassemble N instructions at ADDR (default: the pc) in the vCPU's "
                "current mode (16/32/64-bit)\n"
                "monitor mode              the selected vCPU's mode, paging, CR0/CR4/EFER\n"
                "monitor mechanisms        how breakpoints, watchpoints and steps work on this KVM\n"
                "monitor swbreak int3|hw|pagetrap|auto  how later `break`s are set (auto: int3 where KVM "
                "sees it; pagetrap also takes hbreak)\n")

class RamWindow:
    """A guest RAM page taken out of the memory slots for a page trap, served to the guest's data
    accesses (KVM_EXIT_MMIO, split at page boundaries by KVM's emulator) from the same host memory."""

    def __init__(self, mem, base: int) -> None:
        self.mem, self.base = mem, base

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.mem.read(self.base + offset, size), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self.mem.write(self.base + offset, value.to_bytes(size, "little"))


class StopEvent:
    __slots__ = ("index", "signal", "reason", "addr")

    def __init__(self, index: int, signal: int = 5, reason: str = "", addr: int = 0) -> None:
        self.index, self.signal, self.reason, self.addr = index, signal, reason, addr


class _Slot:
    """One vCPU as the stub sees it."""

    __slots__ = ("vcpu", "parked", "calls", "resume", "state", "stepping", "inject", "page_step", "page_phys")

    def __init__(self, vcpu) -> None:
        self.vcpu = vcpu
        self.parked = False
        self.calls: collections.deque = collections.deque()
        self.resume: str | None = None  # "c" or "s", set by the stub thread to release the vCPU
        self.state: RegisterState | None = None  # cached while parked
        self.stepping = False
        self.inject = 0  # KVM_GUESTDBG_INJECT_* for the next entry
        self.page_step: int | None = None  # the linear page this vCPU is single-stepped through (page trap)
        self.page_phys = 0  # ... and its guest-physical page, back in the memory slots meanwhile


class _Box:
    __slots__ = ("done", "value")

    def __init__(self) -> None:
        self.done = False
        self.value = None


class _Disconnect(Exception):
    pass


_RUN_ON = StopEvent(-1)  # _classify: not a stop, and nothing to give back to the guest


class GdbStub:
    """The RSP server for one :class:`pvhboot.vmm.builder.Machine`.  ``start()`` before the vCPU
    threads start, ``close()`` after they are joined."""

    POLL_S = 0.1  # how often blocked waits look at the VM's stop flag
    # What a parked vCPU thread issues for the stub, beside the run loop's own (vmm/seccomp.py's
    # allow-list must let them through): registers, FPU, translations, guest debugging.
    # Page traps: a vCPU thread stepping through a trapped page changes the memory slots (a VM ioctl)
    # and takes back the #UD of the emulation failure.
    VCPU_IOCTLS = (abi.KVM_GET_REGS, abi.KVM_SET_REGS, abi.KVM_GET_SREGS, abi.KVM_SET_SREGS, abi.KVM_GET_FPU,
                   abi.KVM_SET_FPU, abi.KVM_TRANSLATE, abi.KVM_SET_GUEST_DEBUG, abi.KVM_GET_VCPU_EVENTS,
                   abi.KVM_SET_VCPU_EVENTS, abi.KVM_SET_USER_MEMORY_REGION)

    def __init__(self, machine, address: str, wait: bool = False, log=None) -> None:
        self.machine = machine
        self.ctl = machine.ctl
        self.mem = machine.mem
        self.wait = wait
        self._log_stream = log if log is not None else sys.stderr
        host, port = check_gdb_address(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, port))
            self._listener.listen(1)
        except (OSError, OverflowError) as e:
            self._listener.close()
            raise ConfigError(f"cannot listen for gdb on {host}:{port}: {getattr(e, 'strerror', None) or e}") \
                from None
        self.address = self._listener.getsockname()[:2]
        # A child forked from the VMM (the seccomp supervisor, vmm/seccomp.py) must not hold the
        # debugger's sockets: a connection it keeps open is never closed for the client.
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (stub := ref()) is not None and stub._drop_sockets_in_child())
        kvm = machine.kvm
        # kvm_pvm runs CPL0 guest code through KVM's instruction emulator (platform.md): int3 never
        # reaches user space, and data breakpoints in DR0-3 never fire (measured: a watch on the
        # probe's first store stays silent); exec breakpoints and single-step do work.
        self.int3_unusable = int3_unusable_reason(machine.on_kvm_pvm)  # None: int3 reaches KVM
        self.native_sw_bp = self.int3_unusable is None
        # Nested under QEMU's TCG (the rig) no breakpoint kind reaches KVM (tests/rig/test_gdb_linux.py):
        # break and hbreak become page traps there, watchpoints are single-stepped.
        self.nested_tcg = bool(self.int3_unusable and "QEMU TCG" in self.int3_unusable)
        self.page_traps = self.nested_tcg
        self.data_breakpoints = not machine.on_kvm_pvm and not self.nested_tcg
        self.page_bps: dict[int, tuple[int, str]] = {}  # linear addr -> (guest-physical addr, "sw"/"hw")
        self.holes: set[int] = set()  # guest-physical pages out of the memory slots now
        self._held: dict[int, str] = {}  # vCPUs parked while one steps through a trapped page -> action
        self._gdb_pause = False  # the pause is gdb's (a stop or Ctrl-C), not a page step's
        # Without data breakpoints, write watchpoints are watched by single-stepping the vCPUs and
        # comparing the watched bytes after each instruction (what gdb calls a software watchpoint,
        # done in the stub): [linear addr, length, guest-physical addr or None, last bytes].
        self.soft_watches: list[list] = []
        supported = kvm.check_extension(abi.KvmCap.SET_GUEST_DEBUG2)
        self.block_irq_on_step = bool(supported & abi.KVM_GUESTDBG_BLOCKIRQ)
        self.cond = threading.Condition()
        self.slots = [_Slot(v) for v in machine.vm.vcpus]
        self.pause_requested = False
        self.events: collections.deque[StopEvent] = collections.deque()
        self.dregs: list[DebugSlot | None] = [None] * NUM_DEBUG_REGS
        self.sw_bps: dict[int, tuple[int, int]] = {}  # linear addr -> (guest-physical addr, original byte)
        self.attached = False
        self._said_fallback = False
        self._said_soft_watch = False
        self._said_nested = False
        self._foreign_traps = 0  # #BP/#DB handed back to the guest, logged (the first few)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._closing = False
        self._thread: threading.Thread | None = None
        self._conn: socket.socket | None = None
        self._noack = False
        self._g_thread = 0  # Hg: vCPU index for registers and memory
        self._c_thread = -1  # Hc: -1 all
        self._last_reply = b""
        self._xlate: dict[tuple[int, int], int | None] = {}  # (vCPU, virtual page) -> physical page

    # --- life cycle (called by Machine) ---
    def start(self) -> None:
        self.ctl.debug = self
        if self.wait:  # every vCPU parks before its first instruction
            self.pause_requested = self._gdb_pause = True
            self.events.append(StopEvent(0))
            for s in self.slots:
                s.vcpu.set_immediate_exit(True)
        self._log(f"gdb: listening on {self.address[0]}:{self.address[1]}"
                  + (" (vCPUs wait for the debugger)" if self.wait else ""))
        self._thread = threading.Thread(target=self._serve, name="pvhboot-gdb", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closing = True
        self._poke()
        with self.cond:
            self.cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        for s in (self._conn, self._listener):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    def _drop_sockets_in_child(self) -> None:
        for sock in (self._listener, getattr(self, "_conn", None)):
            if sock is not None:
                try:
                    sock.close()  # the child's copy only: the VMM's stays open
                except OSError:
                    pass

    def _log(self, text: str) -> None:
        try:
            self._log_stream.write(f"pvhboot: {text}\n")
            self._log_stream.flush()
        except (OSError, ValueError):
            pass

    def _poke(self) -> None:
        try:
            os.write(self._wake_w, b"!")
        except OSError:
            pass

    # --- vCPU-thread side (called by the run loop) ---
    def on_kick(self, vcpu) -> None:
        with self.cond:
            if not self.pause_requested:
                vcpu.set_immediate_exit(False)  # a stale kick: run on
                return
        self.park(vcpu, None)

    def on_debug_exit(self, vcpu, record) -> bool:
        slot = self.slots[vcpu.index]
        event = self._classify(slot, record)
        if event is _RUN_ON:  # a soft-watch step that changed nothing: keep stepping
            return True
        if event is None:  # the guest's own #BP/#DB: hand it back to the guest
            slot.inject = abi.KVM_GUESTDBG_INJECT_BP if record.exception == 3 else abi.KVM_GUESTDBG_INJECT_DB
            self._apply_debug(slot)
            return True
        self._request_pause()
        self.park(vcpu, event)
        return not self.ctl.stopping

    def _classify(self, slot: _Slot, record) -> StopEvent | None:
        index = slot.vcpu.index
        if slot.page_step is not None and record.exception == 1:
            return self._page_step_done(slot, record.pc)
        if record.exception == 3:  # #BP: one of our int3s?
            if record.pc in self.sw_bps:  # KVM reports the int3's own address (VMX, SVM)
                return StopEvent(index, reason="swbreak")
            if record.pc - 1 in self.sw_bps:
                # reported after the int3 (trap-style): put the pc back on the breakpoint, as gdb
                # expects with swbreak (the original instruction runs when gdb steps over it)
                regs = slot.vcpu.get_regs()
                regs.rip -= 1
                slot.vcpu.set_regs(regs)
                return StopEvent(index, reason="swbreak")
            if self._foreign_traps < 3:
                self._foreign_traps += 1
                self._log(f"gdb: #BP at {record.pc:#x} on vCPU {index} is not a breakpoint of ours: "
                          "given back to the guest")
            return None
        for i, s in enumerate(self.dregs):
            if s is not None and record.dr6 & (1 << i):
                if s.kind in _BREAK_REASON:
                    return StopEvent(index, reason=_BREAK_REASON[s.kind])
                return StopEvent(index, reason=s.kind, addr=s.report_addr)
        if self.soft_watches and self.attached:
            hit = self._soft_watch_hit(slot.vcpu)
            if hit is not None:
                return StopEvent(index, reason="watch", addr=hit)
            if not slot.stepping:
                return _RUN_ON
        if slot.stepping and self.attached:  # DR6.BS: the step gdb asked for is done
            return StopEvent(index)
        if self._foreign_traps < 3:
            self._foreign_traps += 1
            self._log(f"gdb: #DB at {record.pc:#x} on vCPU {index} (DR6={record.dr6:#x}) is not ours: "
                      "given back to the guest")
        return None  # the guest's own #DB (its TF or debug registers)

    def _soft_watch_hit(self, vcpu) -> int | None:
        """After one instruction: the address of a soft watchpoint whose bytes changed, else None."""
        mem = self.mem
        for w in self.soft_watches:
            addr, length, phys, last = w
            if phys is None:  # not mapped when inserted (paging changes): try again now
                phys = w[2] = vcpu.translate(addr)
                if phys is None or not mem.contains(phys, length):
                    w[2] = None
                    continue
            now = mem.read(phys, length)
            if now != last:
                w[3] = now
                return addr
        return None

    # --- page traps (vCPU-thread side) ---
    def on_exec_trap(self, vcpu, record) -> bool:
        """KVM_EXIT_INTERNAL_ERROR on ``vcpu``: True when it is an instruction fetch from a trapped page
        (handled here: a breakpoint stop, or a step through the page), False for a real failure."""
        if not self.holes or record.suberror != abi.KvmInternalError.EMULATION:
            return False
        rip = vcpu.get_regs().rip  # CS is flat at the PVH entry and in long mode: linear == rip
        phys = vcpu.translate(rip)
        if phys is None or phys & ~0xFFF not in self.holes:
            return False
        vcpu.clear_pending_exception()  # the #UD KVM queued with the failure (x86.c handle_emulation_failure)
        slot = self.slots[vcpu.index]
        bp = self.page_bps.get(rip)
        if bp is not None and not slot.stepping:
            self._request_pause()
            self.park(vcpu, StopEvent(vcpu.index, reason=_BREAK_REASON[bp[1]]))
            return not self.ctl.stopping
        self._hold_others(vcpu)
        with self.cond:
            slot.page_step, slot.page_phys = rip & ~0xFFF, phys & ~0xFFF
            self._sync_holes()
        self._apply_debug(slot)
        return True

    def _page_step_done(self, slot: _Slot, pc: int) -> StopEvent | None:
        """One instruction of a page step is done (#DB): a stop, or _RUN_ON (stepping on or not)."""
        bp = self.page_bps.get(pc)
        if bp is not None or slot.stepping:  # a breakpoint, or the single step gdb asked for
            self._end_page_step(slot, release=False)
            if slot.stepping or bp is None:
                return StopEvent(slot.vcpu.index)
            return StopEvent(slot.vcpu.index, reason=_BREAK_REASON[bp[1]])
        if pc & ~0xFFF != slot.page_step:  # left the page: trap it again, let the others run
            self._end_page_step(slot, release=True)
        return _RUN_ON

    def _end_page_step(self, slot: _Slot, release: bool) -> None:
        with self.cond:
            slot.page_step = None
            self._sync_holes()
            if release and self._held and not self._gdb_pause:
                self.pause_requested = False
                for i, action in self._held.items():
                    other = self.slots[i]
                    if other.parked and other.resume is None:
                        other.resume, other.parked = action, False
                self.cond.notify_all()
            self._held = {}
        self._apply_debug(slot)

    def _hold_others(self, vcpu) -> None:
        """Park every other running vCPU while ``vcpu`` steps through a trapped page with the page back
        in (none of them may pass through it unseen)."""
        with self.cond:
            if self._gdb_pause:
                return  # gdb is stopping them all anyway
            self._held = {s.vcpu.index: "s" if s.stepping else "c" for s in self.slots
                          if s.vcpu is not vcpu and not s.parked}
            if not self._held:
                return
            self.pause_requested = True
        self.ctl.kick_all()
        vcpu.set_immediate_exit(False)  # the kick is for the others
        with self.cond:
            while not all(self.slots[i].parked for i in self._held):
                if self.ctl.stopping or self._closing or self._gdb_pause:
                    return
                self.cond.wait(self.POLL_S)

    def _sync_holes(self) -> None:
        """Make the memory slots' holes match the page-trap breakpoints (minus pages being stepped
        through).  Caller holds ``self.cond``, with every vCPU that could run there parked."""
        want: set[int] = set()
        if self.attached:
            want = {phys & ~0xFFF for phys, _ in self.page_bps.values()}
            want -= {s.page_phys for s in self.slots if s.page_step is not None}
        if want == self.holes:
            return
        bus = self.machine.mmio_bus
        self.machine.vm.set_ram_holes(want)
        for page in self.holes - want:
            bus.remove(page)
        for page in want - self.holes:
            bus.insert(RamWindow(self.mem, page), page, 0x1000, "gdb page trap")
        self.holes = want

    def park(self, vcpu, event: StopEvent | None) -> None:
        """Hold this vCPU thread outside KVM_RUN until the stub resumes it; meanwhile run the calls
        the stub queues for this vCPU (its ioctls must come from this thread)."""
        slot = self.slots[vcpu.index]
        ctl = self.ctl
        # The stop reply needs this vCPU's registers: read them here, on its own thread, instead of
        # through the command queue (one cross-thread round trip less per stepi).
        state = RegisterState(vcpu.get_regs(), vcpu.get_sregs(), vcpu.get_fpu()) if event is not None else None
        with self.cond:
            if state is not None:
                slot.state = state
            vcpu.set_immediate_exit(False)
            slot.parked = True
            slot.stepping = False
            if event is not None:
                self.events.append(event)
            self.cond.notify_all()
            self._poke()
            while True:
                if ctl.stopping or self._closing:
                    break
                if slot.calls:
                    fn, box = slot.calls.popleft()
                    self.cond.release()
                    try:
                        value = fn(vcpu)
                    except Exception as e:  # noqa: BLE001 - handed to the caller
                        value = e
                    finally:
                        self.cond.acquire()
                    box.value, box.done = value, True
                    self.cond.notify_all()
                    continue
                if slot.resume is not None:
                    break
                self.cond.wait(self.POLL_S)
            action, slot.resume = slot.resume, None
            slot.parked = False
            slot.state = None
            slot.stepping = action == "s"
        if ctl.stopping:
            vcpu.set_immediate_exit(True)
            return
        self._apply_debug(slot)

    def _apply_debug(self, slot: _Slot) -> None:
        control = 0
        if self.attached and (self.sw_bps or any(self.dregs) or slot.stepping):
            control = abi.KVM_GUESTDBG_ENABLE
            if self.sw_bps:
                control |= abi.KVM_GUESTDBG_USE_SW_BP
            if any(self.dregs):
                control |= abi.KVM_GUESTDBG_USE_HW_BP
            if slot.stepping:
                control |= abi.KVM_GUESTDBG_SINGLESTEP
                if self.block_irq_on_step:
                    control |= abi.KVM_GUESTDBG_BLOCKIRQ
        if slot.page_step is not None:  # through a trapped page, one instruction at a time
            control |= abi.KVM_GUESTDBG_ENABLE | abi.KVM_GUESTDBG_SINGLESTEP
        if self.attached and self.soft_watches:  # every instruction, interrupts allowed
            control |= abi.KVM_GUESTDBG_ENABLE | abi.KVM_GUESTDBG_SINGLESTEP
        if slot.inject:
            control |= abi.KVM_GUESTDBG_ENABLE | slot.inject
            slot.inject = 0
        slot.vcpu.set_guest_debug(control, debugregs(self.dregs) if control & abi.KVM_GUESTDBG_USE_HW_BP else ())

    # --- stub-thread side: control of the parked vCPUs ---
    def _request_pause(self) -> None:
        with self.cond:
            self.pause_requested = True
            self._gdb_pause = True
            self._held = {}  # parked for a page step until now: stopped for gdb from here on
        if not self.ctl.stopping:  # a stopping VM's threads are leaving (or gone): nothing to kick
            self.ctl.kick_all()

    def _wait_all_parked(self) -> None:
        with self.cond:
            while not all(s.parked for s in self.slots):
                if self.ctl.stopping or self._closing:
                    raise _Disconnect("the VM stopped")
                self.cond.wait(self.POLL_S)

    def _resume(self, actions: dict[int, str]) -> None:
        """Release every parked vCPU: ``actions[index]`` "c" or "s"; a vCPU without one stays parked."""
        self._xlate.clear()
        with self.cond:
            self.pause_requested = False
            self._gdb_pause = False
            self.events.clear()
            for i, action in actions.items():
                slot = self.slots[i]
                slot.resume = action
                slot.parked = False  # from now on: a later pause waits for this vCPU to park again
            self.cond.notify_all()

    def call(self, index: int, fn):
        """Run ``fn(vcpu)`` on vCPU ``index``'s own (parked) thread and return its result."""
        slot = self.slots[index]
        box = _Box()
        with self.cond:
            if not slot.parked:
                raise OSError(errno.EBUSY, f"vCPU {index} is not stopped")
            slot.calls.append((fn, box))
            self.cond.notify_all()
            while not box.done:
                if self.ctl.stopping:
                    raise _Disconnect("the VM stopped")
                self.cond.wait(self.POLL_S)
        if isinstance(box.value, Exception):
            raise box.value
        return box.value

    def _state(self, index: int) -> RegisterState:
        slot = self.slots[index]
        if slot.state is None:
            slot.state = self.call(index, lambda v: RegisterState(v.get_regs(), v.get_sregs(), v.get_fpu()))
        return slot.state

    def _write_state(self, index: int, which: set[str]) -> None:
        st = self._state(index)

        def apply(v):
            if "sregs" in which:
                v.set_sregs(st.sregs)
            if "regs" in which:
                v.set_regs(st.regs)
            if "fpu" in which:
                v.set_fpu(st.fpu)
        if which:
            self._xlate.clear()  # CR0/CR3/CR4/EFER may have changed
            self.call(index, apply)

    # --- memory ---
    def _translate(self, index: int, addr: int) -> int | None:
        """Guest-virtual -> guest-physical through vCPU ``index``'s paging, cached per page while the
        VM stays stopped (gdb reads the bytes at the pc several times per stepi)."""
        key = (index, addr >> 12)
        page = self._xlate.get(key, -1)
        if page == -1:
            base = self.call(index, lambda v: v.translate(addr & ~0xFFF))
            page = self._xlate[key] = None if base is None else base >> 12
        return None if page is None else (page << 12) | (addr & 0xFFF)

    def read_memory(self, addr: int, length: int) -> bytes:
        out = bytearray()
        while length > 0:
            n = min(length, 0x1000 - (addr & 0xFFF))
            phys = self._translate(self._g_thread, addr)
            if phys is None or not self.mem.contains(phys, n):
                break
            chunk = bytearray(self.mem.read(phys, n))
            for lin, (_, orig) in self.sw_bps.items():  # show the bytes our int3s replaced
                if addr <= lin < addr + n:
                    chunk[lin - addr] = orig
            out += chunk
            addr, length = addr + n, length - n
        return bytes(out)

    def write_memory(self, addr: int, data: bytes) -> bool:
        pos = 0
        while pos < len(data):
            n = min(len(data) - pos, 0x1000 - ((addr + pos) & 0xFFF))
            phys = self._translate(self._g_thread, addr + pos)
            if phys is None or not self.mem.contains(phys, n):
                return False
            chunk = bytearray(data[pos:pos + n])
            for lin, (bp_phys, _) in list(self.sw_bps.items()):  # keep our int3s; remember the new byte
                if addr + pos <= lin < addr + pos + n:
                    self.sw_bps[lin] = (bp_phys, chunk[lin - addr - pos])
                    chunk[lin - addr - pos] = 0xCC
            self.mem.write(phys, bytes(chunk))
            pos += n
        return True

    # --- breakpoints ---
    def insert(self, ztype: int, addr: int, length: int) -> bool:
        kind = _Z_KIND[ztype]
        if self.nested_tcg and not self._said_nested:
            self._said_nested = True  # the rig: measured by tests/rig/test_gdb_linux.py
            self._log("gdb: on a KVM nested under QEMU TCG neither int3 nor the debug registers are reported "
                      "(TCG applies neither to the nested guest): breakpoints are page traps, watchpoints "
                      "are single-stepped")
        if self.page_traps and kind in ("sw", "hw"):
            phys = self._code_phys(addr)
            if phys is None:
                return False
            self.page_bps[addr] = (phys, kind)
            return True
        if kind == "sw":
            if any(s is not None and s.kind == "sw" and s.addr == addr for s in self.dregs) or addr in self.sw_bps:
                return True
            if self.native_sw_bp:
                phys = self._translate(self._g_thread, addr)
                if phys is not None and self.mem.contains(phys, 1):
                    orig = self.mem.read(phys, 1)[0]
                    self.mem.write(phys, b"\xcc")
                    self.sw_bps[addr] = (phys, orig)
                    return True
            if not self._said_fallback:
                self._said_fallback = True
                why = self.int3_unusable or f"{addr:#x} is not mapped by the vCPU's paging yet"
                self._log(f"gdb: software breakpoints use the debug registers ({why}); 4 in all, "
                          "shared with hbreak and watch")
            return self._take_slots([(addr, 1)], kind, addr)
        if kind == "hw":
            if any(s is not None and s.kind == "hw" and s.addr == addr for s in self.dregs):
                return True
            return self._take_slots([(addr, 1)], kind, addr)
        if length <= 0 or length > 32:
            return False
        if not self.data_breakpoints:
            if kind != "watch":  # reads cannot be seen by comparing memory
                return False
            if not any(w[0] == addr and w[1] == length for w in self.soft_watches):
                self.soft_watches.append([addr, length, None, b""])
                self._refresh_soft_watches()
            if not self._said_soft_watch:
                self._said_soft_watch = True
                why = ("nested under QEMU TCG the debug registers are not applied to the guest"
                       if self.nested_tcg else "kvm_pvm: data breakpoints do not fire in emulated CPL0 code")
                self._log(f"gdb: watchpoints are single-stepped on this KVM ({why}); the guest runs much "
                          "slower meanwhile")
            return True
        return self._take_slots(split_watch(addr, length), kind, addr)

    def _code_phys(self, addr: int) -> int | None:
        """The guest-physical address of code at linear ``addr``: through the vCPU's paging, else (not
        mapped yet: a kernel symbol at the 32-bit entry) where the kernel's program headers put it."""
        phys = self._translate(self._g_thread, addr)
        if phys is not None and self.mem.contains(phys, 1):
            return phys
        delta = self.machine.phys_to_virt
        if delta and addr >= delta and self.mem.contains(addr - delta, 1):
            return addr - delta
        return None

    def _refresh_soft_watches(self) -> None:
        """Translate and read every soft watchpoint now (at insertion and before each resume)."""
        for w in self.soft_watches:
            try:
                phys = self._translate(self._g_thread, w[0])
            except (OSError, _Disconnect):
                phys = None
            ok = phys is not None and self.mem.contains(phys, w[1])
            w[2] = phys if ok else None
            w[3] = self.mem.read(phys, w[1]) if ok else b""

    def _take_slots(self, pieces: list[tuple[int, int]], kind: str, report_addr: int) -> bool:
        free = [i for i, s in enumerate(self.dregs) if s is None]
        if len(free) < len(pieces):
            return False
        for i, (a, n) in zip(free, pieces):
            self.dregs[i] = DebugSlot(a, n, kind, report_addr)
        return True

    def remove(self, ztype: int, addr: int, length: int) -> bool:
        kind = _Z_KIND[ztype]
        if kind == "watch" and not self.data_breakpoints:
            before = len(self.soft_watches)
            self.soft_watches = [w for w in self.soft_watches if w[0] != addr]
            return len(self.soft_watches) != before
        if kind in ("sw", "hw") and addr in self.page_bps and self.page_bps[addr][1] == kind:
            del self.page_bps[addr]  # the page leaves the holes when the guest next resumes
            return True
        if kind == "sw" and addr in self.sw_bps:
            phys, orig = self.sw_bps.pop(addr)
            self.mem.write(phys, bytes((orig,)))
            return True
        found = False
        for i, s in enumerate(self.dregs):
            if s is not None and s.kind == kind and s.report_addr == addr:
                self.dregs[i] = None
                found = True
        return found

    def remove_all(self) -> None:
        for addr in list(self.sw_bps):
            self.remove(0, addr, 1)
        self.dregs = [None] * NUM_DEBUG_REGS
        self.page_bps = {}
        self.soft_watches = []

    # --- the connection ---
    def _serve(self) -> None:
        listener = self._listener
        while not self._closing and not self.ctl.stopping:
            try:
                r, _, _ = select.select([listener], [], [], self.POLL_S)
            except (OSError, ValueError):
                return
            if not r:
                continue
            try:
                conn, peer = listener.accept()
            except OSError:
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._log(f"gdb: client {peer[0]}:{peer[1]} attached")
            self._conn = conn
            how = "detached"
            try:
                self._session(conn)
            except _Disconnect as e:
                how = str(e) or "disconnected"
            except (OSError, ProtocolError) as e:
                how = f"disconnected ({e})"
            except Exception as e:  # noqa: BLE001 - a stub bug ends this session, never the stub or the VM
                how = f"disconnected by a stub error ({type(e).__name__}: {e})"
            finally:
                self._end_session(conn)
            if not self.ctl.stopping:
                self._log(f"gdb: client {how}; the guest runs on, waiting for a new client")

    def _end_session(self, conn: socket.socket) -> None:
        self._conn = None
        try:
            conn.close()
        except OSError:
            pass
        if not self.attached:
            return
        if self.ctl.stopping or self._closing:
            # The VM is over: no pause (its kick would signal vCPU threads that may be gone).
            self.attached = False
            return
        # Detach (or a client gone): stop everything if it runs, take every breakpoint out of the
        # guest, and let every vCPU run on without guest debugging.
        try:
            if not self.pause_requested:
                self._request_pause()
            self._wait_all_parked()
        except _Disconnect:  # the VM is stopping anyway
            self.attached = False
            return
        self.remove_all()
        self.attached = False
        with self.cond:
            self._sync_holes()  # no trapped page left
        self._resume({i: "c" for i in range(len(self.slots))})

    def _session(self, conn: socket.socket) -> None:
        self._noack = False
        self._reader = PacketReader()
        self._pending: collections.deque = collections.deque()
        # gdb expects a stopped target on attach.
        if not self.pause_requested:
            self._request_pause()
        self._wait_all_parked()
        self.attached = True
        self._g_thread = 0
        self._c_thread = -1
        with self.cond:
            first = self.events[0] if self.events else StopEvent(0, signal=5)
        self._stop_reply = self._format_stop(first)
        while True:
            payload = self._next_packet(conn)
            reply = self._dispatch(payload)
            if reply is None:  # the packet resumed the guest: wait for it to stop
                continue
            self._send(conn, reply)

    def _recv(self, conn: socket.socket) -> bytes:
        data = conn.recv(4096)
        if not data:
            raise _Disconnect("disconnected")
        return data

    def _next_packet(self, conn: socket.socket) -> bytes:
        while True:
            while self._pending:
                ev = self._pending.popleft()
                if ev[0] == "packet":
                    if not self._noack:
                        conn.sendall(b"+")
                    return ev[1]
                if ev[0] == "bad":
                    conn.sendall(b"-")
                elif ev[0] == "nak" and self._last_reply:
                    conn.sendall(self._last_reply)
                # "ack"; "interrupt" while stopped: nothing to do
            r, _, _ = select.select([conn], [], [], self.POLL_S)
            if self.ctl.stopping or self._closing:
                self._send_exit(conn)
                raise _Disconnect("the VM stopped")
            if r:
                self._pending.extend(self._reader.feed(self._recv(conn)))

    def _send(self, conn: socket.socket, payload: bytes) -> None:
        self._last_reply = frame(payload)
        conn.sendall(self._last_reply)

    def _send_exit(self, conn: socket.socket) -> None:
        req = self.ctl.request
        code = (req.exit_code if req is not None else 0) & 0xFF
        try:
            self._send(conn, b"W%02x" % code)
        except OSError:
            pass

    # --- packets ---
    def _dispatch(self, p: bytes) -> bytes | None:
        try:
            return self._dispatch_inner(p)
        except (ValueError, IndexError, KeyError):
            return b"E16"  # EINVAL: malformed arguments
        except OSError:
            return b"E0e"  # EFAULT-like: the vCPU could not do it

    def _dispatch_inner(self, p: bytes) -> bytes | None:
        if not p:
            return b""
        c = p[:1]
        conn = self._conn
        if c == b"?":
            return self._stop_reply
        if c == b"g":
            return self._state(self._g_thread).all().hex().encode()
        if c == b"G":
            data = bytes.fromhex(p[1:].decode())
            if len(data) != G_SIZE:
                return b"E16"
            return self._write_registers(data)
        if c == b"p":
            n = int(p[1:], 16)
            if n >= len(REGISTERS):
                return b"E16"
            return self._state(self._g_thread).get(n).hex().encode()
        if c == b"P":
            n_s, _, v = p[1:].partition(b"=")
            n = int(n_s, 16)
            if n >= len(REGISTERS):
                return b"E16"
            st = self._state(self._g_thread)
            try:
                which = st.set(n, bytes.fromhex(v.decode()))
            except ValueError:
                return b"E16"
            self._write_state(self._g_thread, {which} - {""})
            return b"OK"
        if c == b"m":
            a, _, n = p[1:].partition(b",")
            data = self.read_memory(int(a, 16), min(int(n, 16), MAX_REPLY_DATA))
            return data.hex().encode() if data or int(n, 16) == 0 else b"E0e"
        if c == b"M":
            head, _, hexdata = p[1:].partition(b":")
            a, _, n = head.partition(b",")
            data = bytes.fromhex(hexdata.decode())
            if len(data) != int(n, 16):
                return b"E16"
            return b"OK" if self.write_memory(int(a, 16), data) else b"E0e"
        if c == b"X":
            head, sep, raw = p[1:].partition(b":")
            a, _, n = head.partition(b",")
            data = unescape_binary(raw)
            if not sep or len(data) != int(n, 16):
                return b"E16"
            return b"OK" if self.write_memory(int(a, 16), data) else b"E0e"
        if c in (b"Z", b"z"):
            fields = p[1:].split(b";")[0].split(b",")
            ztype, addr, kind = int(fields[0]), int(fields[1], 16), int(fields[2], 16)
            if ztype not in _Z_KIND:
                return b""
            if c == b"Z":
                return b"OK" if self.insert(ztype, addr, kind) else b"E1c"  # ENOSPC: no debug register left
            self.remove(ztype, addr, kind)
            return b"OK"
        if c == b"H":
            op, tid = p[1:2], _parse_tid(p[2:])
            if tid > 0 and tid > len(self.slots):
                return b"E16"
            if op == b"g":
                self._g_thread = tid - 1 if tid > 0 else self._g_thread
            elif op == b"c":
                self._c_thread = tid - 1 if tid > 0 else -1
            return b"OK"
        if c == b"T":
            tid = _parse_tid(p[1:])
            return b"OK" if 1 <= tid <= len(self.slots) else b"E16"
        if c in (b"c", b"s", b"C", b"S"):
            if c == b"s" or c == b"S":
                index = self._c_thread if self._c_thread >= 0 else self._g_thread
                return self._run({index: "s"}, conn)
            return self._run({i: "c" for i in range(len(self.slots))}, conn)
        if p.startswith(b"vCont"):
            return self._vcont(p, conn)
        if c == b"D":
            self._send(conn, b"OK")
            raise _Disconnect("detached")
        if c == b"k" or p.startswith(b"vKill"):
            if p.startswith(b"vKill"):
                self._send(conn, b"OK")
            self._log("gdb: the debugger killed the guest")
            self.ctl.stop("quit", 0)
            raise _Disconnect("killed the VM")
        if c == b"q" or c == b"Q":
            return self._query(p)
        return b""  # unknown packet: the protocol's "not supported"

    def _write_registers(self, data: bytes) -> bytes:
        st = self._state(self._g_thread)
        which: set[str] = set()
        pos = 0
        for n, r in enumerate(REGISTERS):
            try:
                which.add(st.set(n, data[pos:pos + r.size]))
            except ValueError:  # a changed selector: ignore it, as a G cannot say which one it meant
                pass
            pos += r.size
        self._write_state(self._g_thread, which - {""})
        return b"OK"

    def _query(self, p: bytes) -> bytes | None:
        if p.startswith(b"qSupported"):
            return (b"PacketSize=%x;qXfer:features:read+;swbreak+;hwbreak+;vContSupported+;QStartNoAckMode+"
                    % PACKET_SIZE)
        if p == b"QStartNoAckMode":
            self._send(self._conn, b"OK")  # acknowledged in ack mode; no acks from the next packet on
            self._noack = True
            return None
        if p.startswith(b"qXfer:features:read:"):
            annex, _, rng = p[len(b"qXfer:features:read:"):].partition(b":")
            if annex != b"target.xml":
                return b"E00"
            off_s, _, len_s = rng.partition(b",")
            off, ln = int(off_s, 16), min(int(len_s, 16), MAX_REPLY_DATA)
            doc = target_xml()
            chunk = doc[off:off + ln]
            return (b"l" if off + ln >= len(doc) else b"m") + escape_binary(chunk)
        if p == b"qfThreadInfo":
            return b"m" + b",".join(b"%x" % (i + 1) for i in range(len(self.slots)))
        if p == b"qsThreadInfo":
            return b"l"
        if p == b"qC":
            return b"QC%x" % (self._g_thread + 1)
        if p.startswith(b"qThreadExtraInfo,"):
            tid = _parse_tid(p.split(b",", 1)[1])
            if not 1 <= tid <= len(self.slots):
                return b"E16"
            return f"vCPU {tid - 1}".encode().hex().encode()
        if p == b"qAttached":
            return b"1"
        if p.startswith(b"qSymbol"):
            return b"OK"
        if p.startswith(b"qRcmd,"):
            return self._monitor(bytes.fromhex(p[6:].decode()).decode("utf-8", "replace"))
        return b""

    def _monitor(self, command: str) -> bytes:
        """``monitor ...`` in gdb: text sent as ``O`` packets, then ``OK``."""
        words = command.split()
        if not words or words[0] == "help":
            text = MONITOR_HELP
        elif words[0] == "disas":
            text = self._monitor_disas(words[1:])
        elif words[0] == "mode":
            text = self._monitor_mode()
        elif words[0] == "mechanisms":
            text = self.mechanisms() + "\n"
        elif words[0] == "swbreak" and len(words) == 2 and words[1] in ("int3", "hw", "pagetrap", "auto"):
            # how later `break`s are set: int3 in memory, a debug register, a page trap (break and
            # hbreak), or what this KVM supports
            if self.page_bps:
                return b"E10"  # EBUSY-like: change the mechanism while no page-trap breakpoint is set
            self.native_sw_bp = {"int3": True, "hw": False, "pagetrap": False,
                                 "auto": self.int3_unusable is None}[words[1]]
            self.page_traps = words[1] == "pagetrap" or (words[1] == "auto" and self.nested_tcg)
            text = self.mechanisms() + "\n"
        else:
            return b"E16"
        for i in range(0, len(text), 512):
            self._send(self._conn, b"O" + text[i:i + 512].encode().hex().encode())
        return b"OK"

    def _monitor_mode(self) -> str:
        from .crash import disassembly_mode

        st = self._state(self._g_thread)
        s = st.sregs
        paging = "paging on" if s.cr0 & (1 << 31) else "paging off"
        return (f"vCPU {self._g_thread}: {disassembly_mode(s)}-bit code, {paging} "
                f"(CR0={s.cr0:#x} CR4={s.cr4:#x} EFER={s.efer:#x} CS={s.cs.selector:#x})\n")

    def _monitor_disas(self, args: list[str]) -> str:
        """Disassemble in the mode the vCPU is in now (16/32/64-bit by CS.D/CS.L and EFER.LMA), which
        gdb cannot do for 32-bit code under an x86-64 target description."""
        from .crash import disassemble, disassembly_mode

        st = self._state(self._g_thread)
        addr = int(args[0], 0) if args else st.regs.rip
        count = max(1, min(int(args[1], 0), 64)) if len(args) > 1 else 8
        bits = disassembly_mode(st.sregs)
        code = self.read_memory(addr, count * 15)
        if not code:
            return f"cannot read memory at {addr:#x}\n"
        return f"{bits}-bit:\n" + "\n".join(disassemble(code, addr, bits, max_insns=count)) + "\n"

    def mechanisms(self) -> str:
        """What this KVM gives the debugger (also the `monitor mechanisms` text)."""
        if self.page_traps:
            why = self.int3_unusable if self.nested_tcg else "monitor swbreak pagetrap"
            sw = hw = f"page traps ({why}; memory-slot holes + single-stepping within the page)"
        else:
            sw = ("int3 (KVM_GUESTDBG_USE_SW_BP)" if self.native_sw_bp
                  else f"debug registers ({self.int3_unusable or 'monitor swbreak hw'})")
            hw = "debug registers"
        watch = ("debug registers" if self.data_breakpoints
                 else "single-stepping + compare (data breakpoints do not fire "
                      f"{'nested under QEMU TCG' if self.nested_tcg else 'on kvm_pvm'}); write only")
        return (f"break (Z0): {sw}; hbreak (Z1): {hw}; watch (Z2-Z4): {watch}; "
                f"stepi: KVM_GUESTDBG_SINGLESTEP{' + BLOCKIRQ' if self.block_irq_on_step else ''}; "
                f"{NUM_DEBUG_REGS} debug registers shared by hbreak, watch and fallen-back break")

    def _vcont(self, p: bytes, conn) -> bytes | None:
        if p == b"vCont?":
            return b"vCont;c;C;s;S;t"
        if not p.startswith(b"vCont;"):
            return b""
        actions: dict[int, str] = {}
        n = len(self.slots)
        for item in p[6:].split(b";"):
            act, _, tid_s = item.partition(b":")
            kind = act[:1].decode().lower()
            if kind not in ("c", "s", "t"):
                return b"E16"
            targets = range(n) if not tid_s or _parse_tid(tid_s) == -1 else [_parse_tid(tid_s) - 1]
            for i in targets:
                if 0 <= i < n and i not in actions:  # the leftmost action that applies wins
                    actions[i] = kind
        run = {i: a for i, a in actions.items() if a in ("c", "s")}
        if not run:
            return self._stop_reply
        return self._run(run, conn)

    def _run(self, actions: dict[int, str], conn) -> bytes | None:
        """Resume, wait for the next stop (a vCPU's debug exit, or Ctrl-C) and send its reply."""
        with self.cond:
            if self.events:
                self.events.popleft()  # the stop gdb has seen
            # Other vCPUs that stopped at the same moment: a breakpoint is hit again when its vCPU
            # resumes (exec breakpoints fault before the instruction), so only steps and watchpoint
            # traps stay pending; the next one is reported without running anything.
            self.events = collections.deque(e for e in self.events if e.reason not in ("swbreak", "hwbreak"))
            pending = self.events[0] if self.events else None
        if pending is not None:
            return self._reply_stop(pending)
        if self.soft_watches:
            self._refresh_soft_watches()  # gdb may have written memory since
        with self.cond:
            self._sync_holes()  # every vCPU is parked
        self._resume(actions)
        interrupted = False
        while True:
            with self.cond:
                have_event = bool(self.events)
            if have_event or interrupted:
                self._wait_all_parked()
                with self.cond:
                    event = self.events[0] if self.events else None
                if event is None:
                    event = StopEvent(self._g_thread, signal=2)  # SIGINT: Ctrl-C
                return self._reply_stop(event)
            r, _, _ = select.select([conn, self._wake_r], [], [], self.POLL_S)
            if self.ctl.stopping or self._closing:
                self._send_exit(conn)
                raise _Disconnect("the VM stopped")
            if self._wake_r in r:
                try:
                    os.read(self._wake_r, 512)
                except OSError:
                    pass
            if conn in r:
                for ev in self._reader.feed(self._recv(conn)):
                    if ev[0] == "interrupt" and not interrupted:
                        interrupted = True
                        self._request_pause()
                    elif ev[0] in ("packet", "bad"):
                        self._pending.append(ev)

    def _reply_stop(self, event: StopEvent) -> bytes:
        self._g_thread = event.index
        self._stop_reply = self._format_stop(event)
        return self._stop_reply

    def _format_stop(self, event: StopEvent) -> bytes:
        parts = [b"T%02xthread:%x;" % (event.signal, event.index + 1)]
        if event.reason in ("swbreak", "hwbreak"):
            parts.append(event.reason.encode() + b":;")
        elif event.reason:
            parts.append(b"%s:%x;" % (event.reason.encode(), event.addr))
        try:  # expedite rip/rsp/rbp: gdb then needs no 'g' for a stepi
            st = self._state(event.index)
            for n in (RIP, RSP, RBP):
                parts.append(b"%02x:%s;" % (n, st.get(n).hex().encode()))
        except (OSError, _Disconnect):
            pass
        return b"".join(parts)


def _parse_tid(text: bytes) -> int:
    """gdb thread id: hex, "-1" all, "0" any."""
    text = text.strip()
    if text in (b"-1", b""):
        return -1
    if text.startswith(b"p"):  # multiprocess form p<pid>.<tid>
        text = text.split(b".", 1)[-1]
    return int(text, 16)


