"""The contract between the boot writers (boot/) and the VMM (vmm/).

``plan_guest(kernel, config) -> MemoryPlan`` is a pure dry run (what `pvhboot plan` prints);
``load_guest(kernel, config, plan, mem) -> LoadedGuest`` writes every blob into GuestMemory and
returns the boot vCPU's state as data.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .cpu_state import CpuState

PROTOCOLS = ("pvh", "linux32", "linux64")


def resolve_protocol(kernel, requested: str) -> str:
    """auto: PVH when the kernel has the PHYS32_ENTRY note, else the 64-bit Linux protocol."""
    if requested != "auto":
        return requested
    return "pvh" if kernel.entries.pvh is not None else "linux64"


@dataclass(frozen=True)
class BootConfig:
    memory: int = 512 << 20  # bytes of guest RAM
    cpus: int = 1
    cmdline: str = ""
    initrd: str | None = None  # path; read (or mmapped) by load_guest
    protocol: str = "pvh"  # resolved protocol: one of PROTOCOLS (the VMM resolves "auto")
    start_info_version: int = 1  # PVH: hvm_start_info version 1 (memmap) or 0
    acpi: bool = True
    virtio_mmio: tuple[tuple[int, int, int], ...] = ()  # (base, size, gsi) per transport, for the DSDT


@dataclass(frozen=True)
class Placement:
    """One blob in guest memory."""

    name: str  # "kernel[0]", "start_info", "modlist", "memmap", "cmdline", "initrd", "zero_page", ...
    addr: int
    size: int
    align: int = 1


@dataclass(frozen=True)
class MemoryRegionSpec:
    """One e820/memmap range: [addr, addr+size) of E820Type ``type``."""

    addr: int
    size: int
    type: int


@dataclass(frozen=True)
class MemoryPlan:
    memory: int
    ram_ranges: tuple[tuple[int, int], ...]  # (gpa, size) backing ranges for GuestMemory
    e820: tuple[MemoryRegionSpec, ...]  # the map the guest is told about, sorted
    placements: tuple[Placement, ...]  # every blob, sorted by address, non-overlapping
    protocol: str
    entry: int  # guest-physical entry address for the protocol

    def find(self, name: str) -> Placement:
        for p in self.placements:
            if p.name == name:
                return p
        raise KeyError(name)


@dataclass
class LoadedGuest:
    plan: MemoryPlan
    cpu: CpuState  # the boot vCPU
    rsdp_addr: int | None = None
    extra: dict[str, object] = field(default_factory=dict)
