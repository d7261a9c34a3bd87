"""A KVM virtual machine fd (api.rst "VM ioctls"): memory slots, in-kernel irqchip and PIT, IRQ lines,
coalesced MMIO/PIO zones, vCPU creation."""
from __future__ import annotations

import ctypes
import fcntl
import os

from ..abi import kvm as abi
from ..errors import KvmError

_ioctl = fcntl.ioctl


class IrqLine:
    """One interrupt line (GSI) of the in-kernel PIC/IOAPIC, driven with KVM_IRQ_LINE.

    Matches the devices' ``IrqLine`` protocol (``set_level(high)``) by duck typing: devices never see KVM.
    """

    __slots__ = ("gsi", "_fd", "_high", "_low", "level")

    def __init__(self, vm_fd: int, gsi: int):
        self.gsi = gsi
        self._fd = vm_fd
        self._high = bytes(abi.kvm_irq_level(gsi, 1))
        self._low = bytes(abi.kvm_irq_level(gsi, 0))
        self.level = False

    def set_level(self, high: bool) -> None:
        self.level = bool(high)
        try:
            _ioctl(self._fd, abi.KVM_IRQ_LINE, self._high if high else self._low)
        except OSError as e:
            raise KvmError(f"KVM_IRQ_LINE (GSI {self.gsi}, level {int(high)}) failed: {e.strerror} "
                           f"(errno {e.errno})") from None


class Vm:
    """Created by :meth:`pvhboot.kvm.Kvm.create_vm`.  Closing it closes its vCPUs."""

    def __init__(self, kvm, fd: int):
        self.kvm = kvm
        self.fd = fd
        self.vcpus: list = []
        self._ram: list[tuple[int, int, int]] = []  # (guest address, size, host address) per RAM region
        self._ram_slots: dict[int, tuple[int, int, int]] = {}  # memory slot -> the RAM piece it maps
        self.has_irqchip = False

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for v in self.vcpus:
            v.close()
        self.vcpus = []
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _call(self, name: str, req: int, arg=0, mutate: bool | None = None) -> int:
        try:
            if mutate is None:
                return _ioctl(self.fd, req, arg)
            return _ioctl(self.fd, req, arg, mutate)
        except OSError as e:
            raise KvmError(f"{name} failed: {e.strerror} (errno {e.errno})") from None

    # --- memory ---
    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory_size: int,
                               userspace_addr: int, flags: int = 0) -> None:
        region = abi.kvm_userspace_memory_region(slot, flags, guest_phys_addr, memory_size, userspace_addr)
        self._call(f"KVM_SET_USER_MEMORY_REGION (slot {slot}, {guest_phys_addr:#x}+{memory_size:#x})",
                   abi.KVM_SET_USER_MEMORY_REGION, bytes(region))

    def add_guest_memory(self, mem) -> None:
        """One memory slot per RAM region of a :class:`pvhboot.memory.GuestMemory` (region.host_addr)."""
        for region in mem.regions:
            self._ram.append((region.guest_addr, region.size, region.host_addr))
        self.set_ram_holes(set())

    def set_ram_holes(self, holes: set[int]) -> None:
        """Leave the 4 KiB guest pages at ``holes`` (page addresses) out of the memory slots, every other
        RAM page in: a guest access to a hole exits to user space (KVM_EXIT_MMIO for data, an emulation
        failure for an instruction fetch), which is how the gdb stub traps execution where no breakpoint
        kind reaches KVM.  Only the slots that change are deleted and added again, so call it while no
        vCPU can touch their RAM (all stopped)."""
        want = []
        for gpa, size, host in self._ram:
            start, end = gpa, gpa + size
            for hole in sorted(h for h in holes if gpa <= h < gpa + size):
                if hole > start:
                    want.append((start, hole - start, host + start - gpa))
                start = hole + 0x1000
            if end > start:
                want.append((start, end - start, host + start - gpa))
        have = {piece: slot for slot, piece in self._ram_slots.items()}
        for slot, piece in list(self._ram_slots.items()):
            if piece not in want:
                self.set_user_memory_region(slot, piece[0], 0, piece[2])  # size 0 deletes the slot
                del self._ram_slots[slot]
        for piece in want:
            if piece not in have:
                slot = next(i for i in range(len(self._ram_slots) + 1) if i not in self._ram_slots)
                self.set_user_memory_region(slot, piece[0], piece[1], piece[2])
                self._ram_slots[slot] = piece

    # --- platform devices inside KVM ---
    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: PIC pair + IOAPIC in the kernel, a local APIC per vCPU created after."""
        self._call("KVM_CREATE_IRQCHIP", abi.KVM_CREATE_IRQCHIP)
        self.has_irqchip = True

    def create_pit2(self, flags: int = abi.KVM_PIT_SPEAKER_DUMMY) -> None:
        """KVM_CREATE_PIT2; KVM_PIT_SPEAKER_DUMMY makes port 0x61 reads harmless (no user exit)."""
        cfg = abi.kvm_pit_config(flags=flags)
        self._call("KVM_CREATE_PIT2", abi.KVM_CREATE_PIT2, bytes(cfg))

    def set_tss_addr(self, addr: int) -> None:
        """KVM_SET_TSS_ADDR: three pages of guest-physical space KVM needs on Intel (real mode).

        The argument is an unsigned address (e.g. 0xfffbd000) that overflows the C int fcntl.ioctl
        converts an int to (platform.md): pass its two's-complement signed value.
        """
        signed = ctypes.c_int32(addr & 0xFFFFFFFF).value
        self._call(f"KVM_SET_TSS_ADDR ({addr:#x})", abi.KVM_SET_TSS_ADDR, signed)

    def set_identity_map_addr(self, addr: int) -> None:
        """KVM_SET_IDENTITY_MAP_ADDR (a pointer to a u64): one page, set before creating vCPUs."""
        self._call(f"KVM_SET_IDENTITY_MAP_ADDR ({addr:#x})", abi.KVM_SET_IDENTITY_MAP_ADDR,
                   bytes(abi.u64(addr)))

    def irq_line(self, gsi: int) -> IrqLine:
        if not self.has_irqchip:
            raise KvmError(f"IRQ line {gsi} needs the in-kernel irqchip (create_irqchip first)")
        return IrqLine(self.fd, gsi)

    def register_coalesced_zone(self, addr: int, size: int, pio: bool = False) -> None:
        """KVM_REGISTER_COALESCED_MMIO: writes to this MMIO (or, with pio, port) range are queued in the
        ring page instead of exiting (KVM_CAP_COALESCED_MMIO / KVM_CAP_COALESCED_PIO)."""
        cap = abi.KvmCap.COALESCED_PIO if pio else abi.KvmCap.COALESCED_MMIO
        if not self.kvm.check_extension(cap):
            raise KvmError(f"this KVM lacks {cap.name}")
        zone = abi.kvm_coalesced_mmio_zone(addr, size, 1 if pio else 0)
        self._call(f"KVM_REGISTER_COALESCED_MMIO ({addr:#x}+{size:#x}, pio={pio})",
                   abi.KVM_REGISTER_COALESCED_MMIO, bytes(zone))

    # --- eventfds: device notifications and interrupts without a user-space exit ---
    def ioeventfd(self, fd: int, addr: int, length: int, datamatch: int | None = None, pio: bool = False,
                  deassign: bool = False) -> None:
        """KVM_IOEVENTFD: a guest write of ``length`` bytes at ``addr`` (equal to ``datamatch`` when
        given) signals eventfd ``fd`` in the kernel; the vCPU does not exit."""
        flags = ((abi.KVM_IOEVENTFD_FLAG_DATAMATCH if datamatch is not None else 0)
                 | (abi.KVM_IOEVENTFD_FLAG_PIO if pio else 0) | (abi.KVM_IOEVENTFD_FLAG_DEASSIGN if deassign else 0))
        arg = abi.kvm_ioeventfd(datamatch=datamatch or 0, addr=addr, len=length, fd=fd, flags=flags)
        self._call(f"KVM_IOEVENTFD ({addr:#x}+{length}, fd {fd})", abi.KVM_IOEVENTFD, bytes(arg))

    def irqfd(self, fd: int, gsi: int, deassign: bool = False) -> None:
        """KVM_IRQFD: writing eventfd ``fd`` injects an edge on ``gsi`` of the in-kernel irqchip."""
        if not self.has_irqchip:
            raise KvmError(f"KVM_IRQFD on GSI {gsi} needs the in-kernel irqchip")
        arg = abi.kvm_irqfd(fd=fd, gsi=gsi, flags=abi.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0)
        self._call(f"KVM_IRQFD (gsi {gsi}, fd {fd})", abi.KVM_IRQFD, bytes(arg))

    # --- vCPUs ---
    def create_vcpu(self, index: int):
        from .vcpu import Vcpu

        fd = self._call(f"KVM_CREATE_VCPU ({index})", abi.KVM_CREATE_VCPU, index)
        try:
            vcpu = Vcpu(self, index, fd, self.kvm.vcpu_mmap_size)
        except BaseException:
            os.close(fd)
            raise
        self.vcpus.append(vcpu)
        return vcpu
