"""The contract between the boot writers (boot/) and the VMM (vmm/).

``plan_guest(kernel, config) -> BootPlan`` is a pure dry run (what `pvhboot plan` prints): every
address, the entry, the encoded command line and the setup header, decided once.
``load_guest(plan, mem) -> LoadedGuest`` writes what the plan says into GuestMemory and returns the
boot vCPU's state as data; it decides nothing.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from ..abi.bootparam import setup_header
from ..image.model import KernelImage, Protocol, RelocWindow
from ..image.relocs import Relocations
from .cpu_state import CpuState


def resolve_protocol(kernel: KernelImage, requested: Protocol | str) -> Protocol:
    """auto: PVH when the kernel has the PHYS32_ENTRY note, else the 64-bit Linux protocol."""
    if requested != "auto":
        return Protocol(requested)
    return Protocol.PVH if kernel.entries.pvh is not None else Protocol.LINUX64


@dataclass(frozen=True)
class BootConfig:
    memory: int = 512 << 20  # bytes of guest RAM
    cpus: int = 1
    cmdline: str = ""
    initrd: str | None = None  # path; read by load_guest
    protocol: Protocol = Protocol.PVH  # resolved (the caller resolves "auto" with resolve_protocol)
    start_info_version: int = 1  # PVH: hvm_start_info version 1 (memmap) or 0
    acpi: bool = True
    # Where the kernel goes, when not at its own address: an explicit guest-physical load address,
    # or a seed from which the plan picks a random one (--kaslr).  At most one of the two.
    load_addr: int | None = None
    kaslr_seed: int | None = None
    virtio_mmio: tuple[tuple[int, int, int], ...] = ()  # (base, size, gsi) per transport, for the DSDT

    def __post_init__(self) -> None:
        # A protocol given by name becomes the enum member; an unknown one is left for plan_guest
        # to refuse with the list of choices.
        if not isinstance(self.protocol, Protocol) and self.protocol in Protocol.choices(auto=False):
            object.__setattr__(self, "protocol", Protocol(self.protocol))


class Blob(enum.StrEnum):
    """What a placement holds (a StrEnum: reports and JSON show the name)."""

    GDT = "gdt"
    IDT = "idt"
    BOOT_STACK = "boot_stack"
    START_INFO = "start_info"  # PVH: struct hvm_start_info
    MODLIST = "modlist"  # PVH: hvm_modlist_entry[] (the initrd)
    MEMMAP = "memmap"  # PVH v1: hvm_memmap_table_entry[]
    ZERO_PAGE = "zero_page"  # Linux protocols: struct boot_params
    PAGE_TABLES = "page_tables"  # linux64: the identity map
    CMDLINE = "cmdline"
    ACPI_RSDP = "acpi_rsdp"
    ACPI_TABLES = "acpi_tables"
    KERNEL = "kernel"  # one placement per kernel segment (index = segment number)
    INITRD = "initrd"


@dataclass(frozen=True)
class Placement:
    """One blob in guest memory."""

    blob: Blob
    addr: int
    size: int
    align: int = 1
    index: int = 0  # which kernel segment (Blob.KERNEL); 0 otherwise

    @property
    def name(self) -> str:
        """'kernel[1]' for a segment of an ELF kernel, else the blob's name."""
        return f"{self.blob.value}[{self.index}]" if self.blob is Blob.KERNEL else self.blob.value


@dataclass(frozen=True)
class KernelSegment:
    """One piece of the kernel file copied to guest memory: ``filesz`` bytes of ``source`` from
    ``offset`` to ``addr``, then up to ``memsz`` bytes reserved (zeroed when ``zero_fill``: the ELF
    bss; a bzImage's decompressor area is reserved, not zeroed)."""

    addr: int
    offset: int
    filesz: int
    memsz: int
    source: bytes | memoryview
    zero_fill: bool = True
    from_elf_file: bool = False  # ``source`` is the ELF file itself (load_guest may map it)


@dataclass(frozen=True)
class MemoryRegionSpec:
    """One e820/memmap range: [addr, addr+size) of E820Type ``type``."""

    addr: int
    size: int
    type: int


@dataclass(frozen=True)
class KernelPlacement:
    """Where the kernel went and why: ``load_addr`` of its first byte (``link_addr`` is its own),
    ``offset`` = the difference (the entry moved by it), the PHYS32_RELOC ``window`` when the kernel
    has one, and the ``kaslr_seed`` a random placement was drawn with.  ``virt_offset``: how far the
    kernel's virtual base was moved (PVH --kaslr with a relocation table; 0 otherwise), with the
    ``relocations`` load_guest applies for it."""

    load_addr: int
    link_addr: int
    window: RelocWindow | None = None
    kaslr_seed: int | None = None
    virt_offset: int = 0
    relocations: Relocations | None = None

    @property
    def offset(self) -> int:
        return self.load_addr - self.link_addr


@dataclass(frozen=True)
class BootPlan:
    """Everything load_guest writes and the vCPU starts with, decided by plan_guest."""

    kernel: KernelImage
    config: BootConfig
    protocol: Protocol
    memory: int
    ram_ranges: tuple[tuple[int, int], ...]  # (gpa, size) backing ranges for GuestMemory
    e820: tuple[MemoryRegionSpec, ...]  # the map the guest is told about, sorted
    placements: tuple[Placement, ...]  # every blob, sorted by address, non-overlapping
    segments: tuple[KernelSegment, ...]  # the kernel's bytes and where they go
    kernel_placement: KernelPlacement
    entry: int  # guest-physical entry address for the protocol
    cmdline: bytes  # the command line as written, NUL included
    setup_header: setup_header | None  # Linux protocols: the bzImage's (from image/) or synthesized

    def find(self, blob: Blob, index: int = 0) -> Placement:
        for p in self.placements:
            if p.blob == blob and p.index == index:
                return p
        raise KeyError(blob)

    def get(self, blob: Blob) -> Placement | None:
        try:
            return self.find(blob)
        except KeyError:
            return None

    @property
    def boot_info(self) -> Placement:
        """start_info (PVH) or the zero page (Linux): what EBX / RSI points at."""
        return self.find(Blob.START_INFO if self.protocol is Protocol.PVH else Blob.ZERO_PAGE)


@dataclass(frozen=True)
class LoadedGuest:
    plan: BootPlan
    cpu: CpuState  # the boot vCPU
    rsdp_addr: int | None = None
