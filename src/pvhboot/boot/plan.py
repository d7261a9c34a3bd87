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
import os
from dataclasses import dataclass

from ..abi.bootparam import HDRS_MAGIC, SETUP_HEADER_OFFSET, STARTUP_64_OFFSET, XLoadFlags, setup_header
from ..abi.e820 import E820Type
from ..abi.start_info import HVM_START_INFO_V0_SIZE, hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info
from ..errors import BootError, ConfigError, LayoutError
from ..memory import layout as L
from .config import PROTOCOLS, BootConfig, MemoryPlan, MemoryRegionSpec, Placement

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


@dataclass(frozen=True)
class KernelBlob:
    """One piece of the kernel file copied to guest memory: ``filesz`` bytes from ``source`` at
    ``offset`` to ``addr``, then zeros up to ``memsz`` (the ELF bss; for a bzImage the rest of the
    reservation that the decompressor uses, which is not zeroed)."""

    name: str
    addr: int
    offset: int
    filesz: int
    memsz: int
    source: bytes | memoryview
    zero_fill: bool = True


def bzimage_setup_header(kernel) -> setup_header:
    """The bzImage's setup_header (boot.rst: it ends at 0x202 + the byte at 0x201)."""
    data = kernel.bzimage.data
    end = min(0x202 + data[0x201], SETUP_HEADER_OFFSET + 123, len(data))
    raw = bytes(data[SETUP_HEADER_OFFSET:end]).ljust(123, b"\0")
    return setup_header.from_buffer_copy(raw)


def max_cmdline_length(kernel) -> int:
    """Longest command line (without its NUL) the kernel accepts: cmdline_size from the bzImage's
    header (boot.rst, protocol 2.06+; 255 before), else Linux's COMMAND_LINE_SIZE - 1 for a vmlinux."""
    if kernel.bzimage is not None:
        hdr = bzimage_setup_header(kernel)
        if hdr.version >= 0x206 and hdr.cmdline_size:
            return hdr.cmdline_size
        return 255
    return L.COMMAND_LINE_SIZE - 1


def initrd_addr_limit(kernel, protocol: str) -> int:
    """Exclusive upper bound for the initrd's last byte + 1."""
    if protocol == "pvh":
        # The PVH module list is u64, but Linux reads module 0 into 32-bit ramdisk_image; keep it
        # below the MMIO hole (low RAM).
        return L.MMIO_HOLE_START
    if kernel.bzimage is not None:
        hdr = bzimage_setup_header(kernel)
        limit = hdr.initrd_addr_max if hdr.version >= 0x203 else DEFAULT_INITRD_ADDR_MAX
        return min(limit + 1, L.MMIO_HOLE_START)
    return VMLINUX_INITRD_ADDR_MAX + 1


def kernel_blobs(kernel, protocol: str) -> tuple[list[KernelBlob], int]:
    """Where the kernel's bytes go for ``protocol``, and the entry address."""
    entry = kernel.require_entry(protocol)  # BootError naming the fix when there is none
    if protocol in ("linux32", "linux64") and kernel.bzimage is not None:
        bz = kernel.bzimage
        hdr = bzimage_setup_header(kernel)
        if hdr.header != HDRS_MAGIC:
            raise BootError(f"{kernel.path}: setup header magic {hdr.header:#x} is not 'HdrS'")
        if protocol == "linux64" and not hdr.xloadflags & XLoadFlags.XLF_KERNEL_64:
            raise BootError(f"{kernel.path}: bzImage has no 64-bit entry (XLF_KERNEL_64 not set)")
        load = hdr.code32_start or L.HIMEM_START
        pm_size = len(bz.data) - bz.setup_size
        # The decompressor (arch/x86/boot/compressed/head_{32,64}.S) works in
        # [base, base + init_size) where base is the load address aligned up to kernel_alignment,
        # raised to LOAD_PHYSICAL_ADDR (= pref_address) -- or pref_address for a non-relocatable
        # kernel.  Reserve all of it so nothing else (initrd) is placed there.
        base = load
        if hdr.version >= 0x20A and hdr.init_size:
            align = hdr.kernel_alignment or L.LARGE_PAGE_SIZE
            base = _align_up(load, align) if hdr.relocatable_kernel else hdr.pref_address
            base = max(base, hdr.pref_address)
        end = max(load + pm_size, base + (hdr.init_size or 0))
        entry = load + (STARTUP_64_OFFSET if protocol == "linux64" else 0)
        return [KernelBlob("kernel", load, bz.setup_size, pm_size, end - load, bz.data, False)], entry
    elf = kernel.elf
    if elf is None:
        raise BootError(f"{kernel.path}: no ELF image to load for {protocol}")
    blobs = []
    for i, seg in enumerate(s for s in elf.segments if s.memsz):
        if seg.filesz > seg.memsz or seg.offset + seg.filesz > len(elf.data):
            raise BootError(f"{kernel.path}: PT_LOAD {i} (offset {seg.offset:#x}, filesz "
                            f"{seg.filesz:#x}, memsz {seg.memsz:#x}) lies outside the file")
        blobs.append(KernelBlob(f"kernel[{i}]", seg.paddr, seg.offset, seg.filesz, seg.memsz, elf.data))
    if not blobs:
        raise BootError(f"{kernel.path}: the ELF has no PT_LOAD segment")
    return blobs, entry


def encode_cmdline(kernel, cmdline: str) -> bytes:
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
    if config.protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {config.protocol!r} (choose from {', '.join(PROTOCOLS)})")
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

    p = [Placement("gdt", L.BOOT_GDT_START, GDT_ENTRIES * 8, 8),
         Placement("idt", L.BOOT_IDT_START, L.BOOT_IDT_SIZE, 8),
         Placement("boot_stack", L.BOOT_STACK_START, L.PAGE_SIZE, L.PAGE_SIZE)]
    if config.protocol == "pvh":
        v1 = config.start_info_version >= 1
        size = ctypes.sizeof(hvm_start_info) if v1 else HVM_START_INFO_V0_SIZE
        p.append(Placement("start_info", L.PVH_INFO_START, size, 8))
        if has_initrd:
            p.append(Placement("modlist", L.MODLIST_START, ctypes.sizeof(hvm_modlist_entry), 8))
        if v1:
            if e820_len > L.MEMMAP_MAX_ENTRIES:
                raise LayoutError(f"memory map of {e820_len} entries exceeds {L.MEMMAP_MAX_ENTRIES}")
            p.append(Placement("memmap", L.MEMMAP_START,
                               ctypes.sizeof(hvm_memmap_table_entry) * e820_len, 8))
    else:
        p.append(Placement("zero_page", L.ZERO_PAGE_START, L.PAGE_SIZE, L.PAGE_SIZE))
    if config.protocol == "linux64":
        p.append(Placement("page_tables", L.PML4_START, L.PAGE_TABLES_END - L.PML4_START, L.PAGE_SIZE))
    p.append(Placement("cmdline", L.CMDLINE_START, cmdline_len, 1))
    if config.acpi:
        p.append(Placement("acpi_rsdp", L.RSDP_ADDR, 36, 16))
        p.append(Placement("acpi_tables", L.ACPI_TABLES_START, acpi_size, 8))
    return p


def _containing(e820: tuple[MemoryRegionSpec, ...], addr: int, size: int) -> MemoryRegionSpec | None:
    for r in e820:
        # A zero-length blob (an empty initrd) may sit at the very end of a range.
        if r.addr <= addr and addr + size <= r.addr + r.size:
            return r
    return None


def plan_guest(kernel, config: BootConfig, *, initrd_size: int | None = None) -> MemoryPlan:
    """Plan guest memory for ``kernel`` under ``config``.

    ``initrd_size`` overrides the size of ``config.initrd`` (for dry runs and property tests that
    have no file); with neither, there is no initrd.
    """
    from .acpi import acpi_tables_size

    _check_config(config)
    size_of_initrd = _initrd_size(config, initrd_size)
    cmdline = encode_cmdline(kernel, config.cmdline)
    blobs, entry = kernel_blobs(kernel, config.protocol)
    memory = config.memory

    # The kernel must sit in RAM that can exist: from 1 MiB, below the MMIO hole.
    for b in blobs:
        if b.addr < L.HIMEM_START or b.addr + b.memsz > L.MMIO_HOLE_START:
            raise LayoutError(f"{b.name} at {b.addr:#x}+{b.memsz:#x} is outside RAM (kernels go "
                              f"between {L.HIMEM_START:#x} and {L.MMIO_HOLE_START:#x})")
    kernel_end = _align_up(max(b.addr + b.memsz for b in blobs), L.PAGE_SIZE)
    initrd_pages = _align_up(size_of_initrd or 0, L.PAGE_SIZE)
    minimum = max(MIN_MEMORY, kernel_end)
    if memory < minimum:
        need = minimum + initrd_pages if kernel_end + initrd_pages <= L.MMIO_HOLE_START else minimum
        need = _align_up(need, L.MiB)  # a value the user can pass to --memory
        raise LayoutError(f"memory size {format_size(memory)} is too small: this kernel needs at "
                          f"least {format_size(need)} (it ends at {kernel_end:#x})")

    e820 = build_e820(memory, config.acpi)
    low_end = min(memory, L.MMIO_HOLE_START)
    placements = _fixed_placements(config, len(cmdline), len(e820), size_of_initrd is not None,
                                   acpi_tables_size(config.cpus, config.virtio_mmio) if config.acpi else 0)
    placements += [Placement(b.name, b.addr, b.memsz, 1) for b in blobs]

    if size_of_initrd is not None:
        limit = min(initrd_addr_limit(kernel, config.protocol), low_end)
        top = _align_down(limit, L.PAGE_SIZE)
        room = max(0, top - kernel_end)
        if size_of_initrd > room:
            hard_top = _align_down(min(initrd_addr_limit(kernel, config.protocol), L.MMIO_HOLE_START),
                                   L.PAGE_SIZE)
            hint = ""
            if kernel_end + initrd_pages <= hard_top:
                need = _align_up(kernel_end + initrd_pages, L.MiB)
                hint = f"; give the guest at least {format_size(need)} of memory"
            raise LayoutError(f"initrd of {size_of_initrd} bytes does not fit: {room} bytes free "
                              f"between the kernel's end {kernel_end:#x} and {top:#x}{hint}")
        addr = _align_down(top - size_of_initrd, L.PAGE_SIZE)
        placements.append(Placement("initrd", addr, size_of_initrd, L.PAGE_SIZE))

    placements.sort(key=lambda p: (p.addr, p.size))
    check_placements(placements, e820)
    return MemoryPlan(memory=memory, ram_ranges=ram_ranges(memory), e820=e820,
                      placements=tuple(placements), protocol=config.protocol, entry=entry)


def check_placements(placements: list[Placement], e820: tuple[MemoryRegionSpec, ...]) -> None:
    """Refuse a blob outside the e820 RAM (ACPI tables: outside the ACPI range) or two that overlap."""
    for p in placements:
        r = _containing(e820, p.addr, p.size)
        want = E820Type.ACPI if p.name.startswith("acpi") else E820Type.RAM
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
