"""The guest-physical memory plan: RAM ranges, the e820 map the guest is told, and where every blob goes.

``plan_guest(kernel, config)`` is pure (it only stats the initrd file): it is what `pvhboot plan`
prints and what :func:`pvhboot.boot.load_guest` then writes.  Addresses come from
:mod:`pvhboot.memory.layout`; the rules come from Documentation/arch/x86/boot.rst (Linux
protocols: kernel at code32_start, initrd below initrd_addr_max, command line below cmdline_size)
and Xen's docs/misc/pvh.pandoc (PVH: kernel at its ELF paddrs, start_info and friends anywhere in
RAM below 4 GiB).

Every refusal is one :class:`LayoutError` / :class:`BootError` / :class:`ConfigError` naming the
bad value.
"""
from __future__ import annotations

import ctypes
import dataclasses
import os

from ..abi.bootparam import HDRS_MAGIC, XLoadFlags
from ..abi.e820 import E820Type
from ..abi.start_info import HVM_START_INFO_V0_SIZE, hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info
from ..errors import BootError, ConfigError, LayoutError
from ..image.model import KernelImage, Protocol, RelocWindow
from ..image.relocs import read_relocations
from ..memory import layout as L
from .config import (
    Blob,
    BootConfig,
    BootPlan,
    KernelPlacement,
    KernelSegment,
    MemoryRegionSpec,
    Placement,
)

MAX_CPUS = 255  # xAPIC ids are 8 bits and 0xff is the broadcast id; MADT processor ids are u8
MIN_MEMORY = 2 * L.MiB  # the low structures plus the smallest kernel at HIMEM_START
# boot.rst: a kernel without initrd_addr_max (protocol < 2.03) takes the initrd below 0x37ffffff.
DEFAULT_INITRD_ADDR_MAX = 0x37FFFFFF
# A vmlinux has no setup header: the x86_64 kernel's own header says 0x7fffffff (header.S).
VMLINUX_INITRD_ADDR_MAX = 0x7FFFFFFF


def format_size(n: int) -> str:
    """Bytes in the largest exact binary unit: 512 MiB, 6 GiB, 1536 KiB, 4097 bytes."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def _align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def _align_down(x: int, a: int) -> int:
    return x // a * a


def max_cmdline_length(kernel: KernelImage) -> int:
    """Longest command line (without its NUL) the kernel accepts: cmdline_size from the bzImage's
    header (boot.rst, protocol 2.06+; 255 before), else Linux's COMMAND_LINE_SIZE - 1 for a vmlinux."""
    if kernel.bzimage is not None:
        hdr = kernel.bzimage.setup_header
        if hdr.version >= 0x206 and hdr.cmdline_size:
            return hdr.cmdline_size
        return 255
    return L.COMMAND_LINE_SIZE - 1


def initrd_addr_limit(kernel: KernelImage, protocol: Protocol) -> int:
    """Exclusive upper bound for the initrd's last byte + 1."""
    if protocol is Protocol.PVH:
        # The PVH module list is u64, but Linux reads module 0 into 32-bit ramdisk_image; keep it
        # below the MMIO hole (low RAM).
        return L.MMIO_HOLE_START
    if kernel.bzimage is not None:
        hdr = kernel.bzimage.setup_header
        limit = hdr.initrd_addr_max if hdr.version >= 0x203 else DEFAULT_INITRD_ADDR_MAX
        return min(limit + 1, L.MMIO_HOLE_START)
    return VMLINUX_INITRD_ADDR_MAX + 1


def _link_segments(kernel: KernelImage, protocol: Protocol) -> tuple[KernelSegment, ...]:
    """The kernel's bytes at its own addresses: a bzImage's protected-mode kernel at code32_start
    (Linux protocols), else the ELF's PT_LOAD segments at their paddrs."""
    if protocol is not Protocol.PVH and kernel.bzimage is not None:
        bz = kernel.bzimage
        hdr = bz.setup_header
        if hdr.header != HDRS_MAGIC:
            raise BootError(f"{kernel.path}: setup header magic {hdr.header:#x} is not 'HdrS'")
        if protocol is Protocol.LINUX64 and not hdr.xloadflags & XLoadFlags.XLF_KERNEL_64:
            raise BootError(f"{kernel.path}: bzImage has no 64-bit entry (XLF_KERNEL_64 not set)")
        load = hdr.code32_start or L.HIMEM_START
        pm_size = len(bz.data) - bz.setup_size
        return (KernelSegment(load, bz.setup_size, pm_size, _decompressor_end(hdr, load, pm_size) - load,
                              bz.data, zero_fill=False),)
    elf = kernel.elf
    if elf is None:
        raise BootError(f"{kernel.path}: no ELF image to load for {protocol}")
    segs = []
    for i, seg in enumerate(s for s in elf.segments if s.memsz):
        if seg.filesz > seg.memsz or seg.offset + seg.filesz > len(elf.data):
            raise BootError(f"{kernel.path}: PT_LOAD {i} (offset {seg.offset:#x}, filesz "
                            f"{seg.filesz:#x}, memsz {seg.memsz:#x}) lies outside the file")
        segs.append(KernelSegment(seg.paddr, seg.offset, seg.filesz, seg.memsz, elf.data,
                                  from_elf_file=kernel.format == "elf"))
    if not segs:
        raise BootError(f"{kernel.path}: the ELF has no PT_LOAD segment")
    return tuple(segs)


def _decompressor_end(hdr, load: int, pm_size: int) -> int:
    """End of what a bzImage loaded at ``load`` uses.  The decompressor
    (arch/x86/boot/compressed/head_{32,64}.S) works in [base, base + init_size) where base is the
    load address aligned up to kernel_alignment, raised to LOAD_PHYSICAL_ADDR (= pref_address) -- or
    pref_address for a non-relocatable kernel.  All of it is reserved so nothing else (initrd) goes
    there."""
    base = load
    if hdr.version >= 0x20A and hdr.init_size:
        align = hdr.kernel_alignment or L.LARGE_PAGE_SIZE
        base = _align_up(load, align) if hdr.relocatable_kernel else hdr.pref_address
        base = max(base, hdr.pref_address)
    return max(load + pm_size, base + (hdr.init_size or 0))


def _relocation_rules(kernel: KernelImage, protocol: Protocol) -> tuple[int, RelocWindow]:
    """(alignment, window) a moved kernel must respect, or BootError saying why it cannot move.

    PVH: the PHYS32_RELOC note (elfnote.h).  Linux protocols: the bzImage's setup header
    (boot.rst: relocatable_kernel, kernel_alignment); a vmlinux has none and stays where it is.
    """
    if protocol is Protocol.PVH:
        window = kernel.elf.reloc_window if kernel.elf is not None else None
        if window is None:
            raise BootError(f"{kernel.path}: cannot be moved for a PVH boot: it has no "
                            "XEN_ELFNOTE_PHYS32_RELOC note (its PVH entry is not position-independent)")
        return window.align or L.LARGE_PAGE_SIZE, window
    hdr = kernel.bzimage.setup_header if kernel.bzimage is not None else None
    if hdr is None:
        raise BootError(f"{kernel.path}: an ELF vmlinux has no setup header, so the {protocol} protocol "
                        "loads it at its ELF paddr; move it with --protocol pvh (needs PHYS32_RELOC)")
    if hdr.version < 0x205 or not hdr.relocatable_kernel:
        raise BootError(f"{kernel.path}: its setup header does not set relocatable_kernel: "
                        "the kernel must be loaded at code32_start")
    return hdr.kernel_alignment or L.LARGE_PAGE_SIZE, RelocWindow(hdr.kernel_alignment, L.HIMEM_START,
                                                                    L.MMIO_HOLE_START - 1)


def _moved(segments: tuple[KernelSegment, ...], offset: int) -> tuple[KernelSegment, ...]:
    return tuple(dataclasses.replace(s, addr=s.addr + offset) for s in segments)


def _span(segments: tuple[KernelSegment, ...]) -> tuple[int, int]:
    """[first byte, end) of the kernel in guest memory."""
    return min(s.addr for s in segments), max(s.addr + s.memsz for s in segments)


def _place_kernel(kernel: KernelImage, config: BootConfig, link: tuple[KernelSegment, ...],
                  fits) -> tuple[tuple[KernelSegment, ...], KernelPlacement]:
    """The kernel at its own address, at config.load_addr, or at a random aligned address drawn
    with config.kaslr_seed among those where ``fits(segments)`` (the rest of the plan works)."""
    link_addr, link_end = _span(link)
    protocol = config.protocol
    if config.load_addr is None and config.kaslr_seed is None:
        window = kernel.elf.reloc_window if protocol is Protocol.PVH and kernel.elf is not None else None
        return link, KernelPlacement(link_addr, link_addr, window)
    align, window = _relocation_rules(kernel, protocol)
    size = link_end - link_addr
    low, high = max(window.min, L.HIMEM_START), min(window.max + 1, L.MMIO_HOLE_START)
    if config.load_addr is not None:
        addr = config.load_addr
        if addr % align or not low <= addr or addr + size > high:
            raise LayoutError(f"load address {addr:#x} is not allowed for {kernel.path}: it must be "
                              f"{format_size(align)}-aligned, at or above {low:#x}, with the kernel's "
                              f"last byte (+{size:#x}) at or below {high - 1:#x}")
        segs = _moved(link, addr - link_addr)
        return segs, KernelPlacement(addr, link_addr, window)
    slots = [a for a in range(_align_up(low, align), high - size + 1, align)
             if fits(_moved(link, a - link_addr))]
    if not slots:
        raise LayoutError(f"no {format_size(align)}-aligned address in [{low:#x}, {high - 1:#x}] leaves "
                          f"room for {kernel.path} (+{size:#x}) and the other blobs in "
                          f"{format_size(config.memory)} of RAM")
    import random  # only for --kaslr: not on the builder's start-up path (bench 3)

    rng = random.Random(config.kaslr_seed)
    addr = rng.choice(slots)
    virt_offset, relocs = _virtual_offset(kernel, protocol, window, align, link_end, rng)
    return _moved(link, addr - link_addr), KernelPlacement(addr, link_addr, window, config.kaslr_seed,
                                                           virt_offset, relocs)


def _virtual_offset(kernel: KernelImage, protocol: Protocol, window: RelocWindow, align: int,
                    link_end: int, rng):
    """(virtual offset, relocations) for --kaslr: a random ``align``-multiple that keeps the kernel
    inside its virtual image window, as the bzImage decompressor's find_random_virt_addr() draws it
    (arch/x86/boot/compressed/kaslr.c: slots of CONFIG_PHYSICAL_ALIGN from LOAD_PHYSICAL_ADDR up to
    KERNEL_IMAGE_SIZE - image size).  PVH only (a bzImage booted with a Linux protocol randomizes
    itself), and only with a relocation table after the ELF (a bzImage payload; not a linker's
    vmlinux): (0, None) otherwise.  Linux's PHYS32_RELOC note states KERNEL_IMAGE_SIZE - 1 as its max
    (arch/x86/platform/pvh/head.S), so the virtual window ends at window.max + 1.

    Why the PVH entry takes the shift (Debian 6.12, tests/rig/test_reloc.py): pvh_start_xen
    computes the offset it adds to its kernel page tables as "where it runs - _pa(pvh_start_xen)",
    and that immediate (`sub ebx, 0x1000a30`, twice) is itself in the relocation table, so the
    tables it builds map the moved virtual range onto where the kernel is; the absolute references
    of the C code it calls first (xen_prepare_pvh, e820__update_table) then land right, and
    __startup_64 derives the final mapping from the relocated _text, as after the decompressor."""
    if protocol is not Protocol.PVH or kernel.elf is None:
        return 0, None
    relocs = read_relocations(kernel.elf)
    if relocs is None:
        return 0, None
    room = window.max + 1 - link_end  # the largest shift that keeps the image in the window
    if room < 0:
        return 0, None
    slots = room // align + 1
    return rng.randrange(slots) * align, relocs


def encode_cmdline(kernel: KernelImage, cmdline: str) -> bytes:
    """The command line as the NUL-terminated bytes written to the guest; refuses one too long."""
    raw = cmdline.encode("utf-8")
    if b"\0" in raw:
        raise BootError("the command line contains a NUL character")
    limit = max_cmdline_length(kernel)
    if len(raw) > limit:
        raise BootError(f"command line of {len(raw)} bytes is longer than the kernel's "
                        f"cmdline_size {limit}")
    return raw + b"\0"


def ram_ranges(memory: int) -> tuple[tuple[int, int], ...]:
    """Backing RAM: [0, min(memory, 3 GiB)) and the rest above 4 GiB."""
    low = min(memory, L.MMIO_HOLE_START)
    ranges = [(0, low)]
    if memory > low:
        ranges.append((L.RAM_ABOVE_4G_START, memory - low))
    return tuple(ranges)


def build_e820(memory: int, acpi: bool = True) -> tuple[MemoryRegionSpec, ...]:
    """The memory map the guest is told: usable RAM below the EBDA, the ISA hole typed reserved
    (with the ACPI tables' range typed ACPI), RAM from 1 MiB, and RAM above 4 GiB."""
    low = min(memory, L.MMIO_HOLE_START)
    e = [MemoryRegionSpec(0, L.EBDA_START, E820Type.RAM)]
    if acpi:
        e += [
            MemoryRegionSpec(L.EBDA_START, L.ACPI_AREA_START - L.EBDA_START, E820Type.RESERVED),
            MemoryRegionSpec(L.ACPI_AREA_START, L.ACPI_AREA_SIZE, E820Type.ACPI),
            MemoryRegionSpec(L.BIOS_AREA_START, L.ISA_END_ADDRESS - L.BIOS_AREA_START, E820Type.RESERVED),
        ]
    else:
        e.append(MemoryRegionSpec(L.EBDA_START, L.ISA_END_ADDRESS - L.EBDA_START, E820Type.RESERVED))
    if low > L.HIMEM_START:
        e.append(MemoryRegionSpec(L.HIMEM_START, low - L.HIMEM_START, E820Type.RAM))
    if memory > low:
        e.append(MemoryRegionSpec(L.RAM_ABOVE_4G_START, memory - low, E820Type.RAM))
    return tuple(e)


def _check_config(config: BootConfig) -> None:
    if config.protocol not in Protocol.bootable():
        raise ConfigError(f"unknown protocol {config.protocol!r} "
                          f"(choose from {', '.join(Protocol.choices(auto=False))})")
    if not isinstance(config.cpus, int) or not 1 <= config.cpus <= MAX_CPUS:
        raise ConfigError(f"cpus {config.cpus!r} out of range (1..{MAX_CPUS})")
    if config.start_info_version not in (0, 1):
        raise ConfigError(f"start_info version {config.start_info_version!r} is not 0 or 1")
    m = config.memory
    if not isinstance(m, int) or m <= 0:
        raise ConfigError(f"memory size {m!r} is not a positive number of bytes")
    if m % L.PAGE_SIZE:
        raise ConfigError(f"memory size {m} bytes is not a multiple of 4 KiB")
    if m > L.MAX_MEMORY:
        raise ConfigError(f"memory size {format_size(m)} is larger than {format_size(L.MAX_MEMORY)}")
    if config.load_addr is not None and config.kaslr_seed is not None:
        raise ConfigError("a load address and a KASLR seed exclude each other: give one")


def _initrd_size(config: BootConfig, initrd_size: int | None) -> int | None:
    if initrd_size is not None or config.initrd is None:
        return initrd_size
    try:
        st = os.stat(config.initrd)
    except OSError as e:
        raise ConfigError(f"initrd {config.initrd}: {e.strerror}") from None
    if not os.path.isfile(config.initrd):
        raise ConfigError(f"initrd {config.initrd}: not a regular file")
    return st.st_size


def _fixed_placements(config: BootConfig, cmdline_len: int, e820_len: int, has_initrd: bool,
                      acpi_size: int) -> list[Placement]:
    from .cpu_state import GDT_ENTRIES

    p = [Placement(Blob.GDT, L.BOOT_GDT_START, GDT_ENTRIES * 8, 8),
         Placement(Blob.IDT, L.BOOT_IDT_START, L.BOOT_IDT_SIZE, 8),
         Placement(Blob.BOOT_STACK, L.BOOT_STACK_START, L.PAGE_SIZE, L.PAGE_SIZE)]
    if config.protocol is Protocol.PVH:
        v1 = config.start_info_version >= 1
        size = ctypes.sizeof(hvm_start_info) if v1 else HVM_START_INFO_V0_SIZE
        p.append(Placement(Blob.START_INFO, L.PVH_INFO_START, size, 8))
        if has_initrd:
            p.append(Placement(Blob.MODLIST, L.MODLIST_START, ctypes.sizeof(hvm_modlist_entry), 8))
        if v1:
            if e820_len > L.MEMMAP_MAX_ENTRIES:
                raise LayoutError(f"memory map of {e820_len} entries exceeds {L.MEMMAP_MAX_ENTRIES}")
            p.append(Placement(Blob.MEMMAP, L.MEMMAP_START,
                               ctypes.sizeof(hvm_memmap_table_entry) * e820_len, 8))
    else:
        p.append(Placement(Blob.ZERO_PAGE, L.ZERO_PAGE_START, L.PAGE_SIZE, L.PAGE_SIZE))
    if config.protocol is Protocol.LINUX64:
        p.append(Placement(Blob.PAGE_TABLES, L.PML4_START, L.PAGE_TABLES_END - L.PML4_START, L.PAGE_SIZE))
    p.append(Placement(Blob.CMDLINE, L.CMDLINE_START, cmdline_len, 1))
    if config.acpi:
        p.append(Placement(Blob.ACPI_RSDP, L.RSDP_ADDR, 36, 16))
        p.append(Placement(Blob.ACPI_TABLES, L.ACPI_TABLES_START, acpi_size, 8))
    return p


def _containing(e820: tuple[MemoryRegionSpec, ...], addr: int, size: int) -> MemoryRegionSpec | None:
    for r in e820:
        # A zero-length blob (an empty initrd) may sit at the very end of a range.
        if r.addr <= addr and addr + size <= r.addr + r.size:
            return r
    return None


def _initrd_addr(size: int, limit: int, kernel: tuple[int, int]) -> int | None:
    """Highest page-aligned address below ``limit`` where ``size`` bytes fit in RAM from 1 MiB
    without touching the kernel's [start, end), or None."""
    start, end = kernel
    top = _align_down(limit, L.PAGE_SIZE)
    addr = _align_down(top - size, L.PAGE_SIZE)
    if addr < _align_up(end, L.PAGE_SIZE) and addr + size > start:  # over the kernel: go below it
        addr = _align_down(start - size, L.PAGE_SIZE)
    return addr if addr >= L.HIMEM_START else None


def _setup_header(kernel: KernelImage, protocol: Protocol, kernel_start: int):
    """The header the zero page carries: the bzImage's as image/ parsed it (code32_start moved with
    the kernel), or one synthesized for a vmlinux; None for PVH (the kernel builds its own)."""
    from .linux import synthesize_setup_header

    if protocol is Protocol.PVH:
        return None
    if kernel.bzimage is None:
        return synthesize_setup_header(code32_start=kernel_start)
    hdr = type(kernel.bzimage.setup_header).from_buffer_copy(kernel.bzimage.setup_header)
    hdr.code32_start = kernel_start  # boot.rst: the loader sets it when it loads the kernel elsewhere
    return hdr


def plan_guest(kernel: KernelImage, config: BootConfig, *, initrd_size: int | None = None) -> BootPlan:
    """Plan guest memory for ``kernel`` under ``config``.

    ``initrd_size`` overrides the size of ``config.initrd`` (for dry runs and property tests that
    have no file); with neither, there is no initrd.
    """
    from .acpi import acpi_tables_size

    _check_config(config)
    protocol = config.protocol
    size_of_initrd = _initrd_size(config, initrd_size)
    cmdline = encode_cmdline(kernel, config.cmdline)
    link_entry = kernel.require_entry(protocol)  # BootError naming the fix when there is none
    link = _link_segments(kernel, protocol)
    memory = config.memory
    e820 = build_e820(memory, config.acpi)
    low_end = min(memory, L.MMIO_HOLE_START)
    fixed = _fixed_placements(config, len(cmdline), len(e820), size_of_initrd is not None,
                              acpi_tables_size(config.cpus, config.virtio_mmio) if config.acpi else 0)
    initrd_limit = min(initrd_addr_limit(kernel, protocol), low_end)

    def fits(segs) -> bool:  # a random placement must leave a plan that works
        start, end = _span(segs)
        if start < L.HIMEM_START or end > low_end:
            return False
        return size_of_initrd is None or _initrd_addr(size_of_initrd, initrd_limit, (start, end)) is not None

    segments, where = _place_kernel(kernel, config, link, fits)

    # The kernel must sit in RAM that can exist: from 1 MiB, below the MMIO hole.
    for i, s in enumerate(segments):
        if s.addr < L.HIMEM_START or s.addr + s.memsz > L.MMIO_HOLE_START:
            raise LayoutError(f"kernel[{i}] at {s.addr:#x}+{s.memsz:#x} is outside RAM (kernels go "
                              f"between {L.HIMEM_START:#x} and {L.MMIO_HOLE_START:#x})")
    kernel_start, kernel_end = _span(segments)
    kernel_end = _align_up(kernel_end, L.PAGE_SIZE)
    initrd_pages = _align_up(size_of_initrd or 0, L.PAGE_SIZE)
    minimum = max(MIN_MEMORY, kernel_end)
    if memory < minimum:
        need = minimum + initrd_pages if kernel_end + initrd_pages <= L.MMIO_HOLE_START else minimum
        need = _align_up(need, L.MiB)  # a value the user can pass to --memory
        raise LayoutError(f"memory size {format_size(memory)} is too small: this kernel needs at "
                          f"least {format_size(need)} (it ends at {kernel_end:#x})")

    placements = fixed + [Placement(Blob.KERNEL, s.addr, s.memsz, 1, index=i) for i, s in enumerate(segments)]
    if size_of_initrd is not None:
        addr = _initrd_addr(size_of_initrd, initrd_limit, (kernel_start, kernel_end))
        if addr is None:
            top = _align_down(initrd_limit, L.PAGE_SIZE)
            room = max(0, top - kernel_end)
            hard_top = _align_down(min(initrd_addr_limit(kernel, protocol), L.MMIO_HOLE_START), L.PAGE_SIZE)
            hint = ""
            if kernel_end + initrd_pages <= hard_top:
                need = _align_up(kernel_end + initrd_pages, L.MiB)
                hint = f"; give the guest at least {format_size(need)} of memory"
            raise LayoutError(f"initrd of {size_of_initrd} bytes does not fit: {room} bytes free "
                              f"between the kernel's end {kernel_end:#x} and {top:#x}{hint}")
        placements.append(Placement(Blob.INITRD, addr, size_of_initrd, L.PAGE_SIZE))

    placements.sort(key=lambda p: (p.addr, p.size))
    check_placements(placements, e820)
    return BootPlan(kernel=kernel, config=config, protocol=protocol, memory=memory,
                    ram_ranges=ram_ranges(memory), e820=e820, placements=tuple(placements),
                    segments=segments, kernel_placement=where, entry=link_entry + where.offset,
                    cmdline=cmdline, setup_header=_setup_header(kernel, protocol, kernel_start))


def check_placements(placements: list[Placement], e820: tuple[MemoryRegionSpec, ...]) -> None:
    """Refuse a blob outside the e820 RAM (ACPI tables: outside the ACPI range) or two that overlap."""
    for p in placements:
        r = _containing(e820, p.addr, p.size)
        want = E820Type.ACPI if p.blob in (Blob.ACPI_RSDP, Blob.ACPI_TABLES) else E820Type.RAM
        if r is None or r.type != want:
            raise LayoutError(f"{p.name} at {p.addr:#x}+{p.size:#x} is outside guest "
                              f"{'ACPI memory' if want == E820Type.ACPI else 'RAM'}")
        if p.align > 1 and p.addr % p.align:
            raise LayoutError(f"{p.name} at {p.addr:#x} is not {p.align}-byte aligned")
    ordered = sorted(placements, key=lambda p: (p.addr, p.size))
    for a, b in zip(ordered, ordered[1:]):
        if a.addr + a.size > b.addr:
            raise LayoutError(f"{a.name} ({a.addr:#x}+{a.size:#x}) overlaps {b.name} "
                              f"({b.addr:#x}+{b.size:#x})")
