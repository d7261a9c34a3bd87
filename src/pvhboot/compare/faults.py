"""Seeded faults: a builder that skips one piece of set-up on one entry path, for proving that
`pvhboot compare` catches exactly the class of bug it exists for (issue 12).

Each fault is a :class:`pvhboot.vmm.MicroVM` ``mutate`` hook: it runs after the boot structures are
written and before the first instruction, and edits the structures the chosen protocol hands over
(hvm_start_info and its memmap for PVH, the zero page for the Linux protocols).  They are reachable
only through the hidden ``--seed-fault NAME:PATH`` option of `pvhboot compare` (tests, the rig).
"""
from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass

from ..abi.bootparam import boot_params
from ..abi.e820 import E820_MAX_ENTRIES_ZEROPAGE, E820Type, boot_e820_entry
from ..abi.start_info import hvm_memmap_table_entry, hvm_start_info
from ..boot.config import Blob
from ..errors import ConfigError
from ..memory import layout as L

HOLE_SIZE = 32 << 20  # the RAM range memmap-ram-dropped takes out
HOLE_ALIGN = 2 << 20


@dataclass(frozen=True)
class Fault:
    name: str
    what: str  # what the builder gets wrong
    moves: str  # the fingerprint fields that should move (probe; Linux)
    apply: Callable  # (loaded, mem, cpus) -> None
    min_cpus: int = 1


def _start_info(loaded, mem) -> tuple[int, hvm_start_info]:
    at = loaded.plan.find(Blob.START_INFO).addr
    return at, hvm_start_info.from_buffer_copy(mem.read(at, ctypes.sizeof(hvm_start_info)))


def _zero_page(loaded, mem) -> tuple[int, boot_params]:
    at = loaded.plan.find(Blob.ZERO_PAGE).addr
    return at, boot_params.from_buffer_copy(mem.read(at, ctypes.sizeof(boot_params)))


def _is_pvh(loaded) -> bool:
    return loaded.plan.protocol == "pvh"


def rsdp_missing(loaded, mem, cpus: int) -> None:
    """The loader does not hand over the RSDP (start_info.rsdp_paddr / boot_params.acpi_rsdp_addr = 0)
    of a machine whose RSDP is not where the legacy scan looks.  pvhboot puts its RSDP at 0xe0000, inside
    the BIOS area a kernel scans when no address is given (ACPI 6.x 5.2.5.1), so the fault also clears
    the RSDP's signature there: without that, forgetting the pointer would change nothing the kernel
    ends up with (which `compare` rightly reports as no finding)."""
    if loaded.rsdp_addr is not None:
        mem.write(loaded.rsdp_addr, b"\0" * 8)  # "RSD PTR "
    if _is_pvh(loaded):
        at, si = _start_info(loaded, mem)
        si.rsdp_paddr = 0
        mem.write(at, bytes(si))
    else:
        at, bp = _zero_page(loaded, mem)
        bp.acpi_rsdp_addr = 0
        mem.write(at, bytes(bp))


def _hole(entries: list[tuple[int, int, int]], loaded) -> list[tuple[int, int, int]]:
    """``entries`` with HOLE_SIZE of RAM taken out of the middle of the largest RAM range, clear of
    every blob the builder placed (kernel, initrd, ...)."""
    ram = [e for e in entries if e[2] == E820Type.RAM]
    if not ram:
        raise ConfigError("memmap-ram-dropped: the memory map has no RAM range")
    addr, size, _ = max(ram, key=lambda e: e[1])
    start = (addr + size // 2) // HOLE_ALIGN * HOLE_ALIGN
    busy = [(p.addr, p.addr + p.size) for p in loaded.plan.placements]
    while any(s < start + HOLE_SIZE and start < e for s, e in busy) and start + HOLE_SIZE < addr + size:
        start += HOLE_ALIGN
    if start + HOLE_SIZE > addr + size or start < addr:
        raise ConfigError("memmap-ram-dropped: no free RAM range to drop (give the cell more memory)")
    out = []
    for e in entries:
        if e[:2] == (addr, size):
            out += [(addr, start - addr, E820Type.RAM), (start + HOLE_SIZE, addr + size - start - HOLE_SIZE,
                                                         E820Type.RAM)]
        else:
            out.append(e)
    return [e for e in out if e[1]]


def memmap_ram_dropped(loaded, mem, cpus: int) -> None:
    """A RAM range (32 MiB from the middle of the largest one) left out of the memory map."""
    if _is_pvh(loaded):
        at, si = _start_info(loaded, mem)
        esz = ctypes.sizeof(hvm_memmap_table_entry)
        old = [hvm_memmap_table_entry.from_buffer_copy(mem.read(si.memmap_paddr + i * esz, esz))
               for i in range(si.memmap_entries)]
        new = _hole([(e.addr, e.size, e.type) for e in old], loaded)
        if si.memmap_paddr != L.MEMMAP_START or len(new) > L.MEMMAP_MAX_ENTRIES:
            raise ConfigError("memmap-ram-dropped: no room for one more memmap entry")
        for i, (a, s, t) in enumerate(new):
            mem.write(si.memmap_paddr + i * esz, bytes(hvm_memmap_table_entry(addr=a, size=s, type=t)))
        si.memmap_entries = len(new)
        mem.write(at, bytes(si))
    else:
        at, bp = _zero_page(loaded, mem)
        new = _hole([(bp.e820_table[i].addr, bp.e820_table[i].size, bp.e820_table[i].type)
                     for i in range(bp.e820_entries)], loaded)
        if len(new) > E820_MAX_ENTRIES_ZEROPAGE:
            raise ConfigError("memmap-ram-dropped: the zero page's e820 table is full")
        for i, (a, s, t) in enumerate(new):
            bp.e820_table[i] = boot_e820_entry(addr=a, size=s, type=t)
        bp.e820_entries = len(new)
        mem.write(at, bytes(bp))


def cmdline_cut(loaded, mem, cpus: int) -> None:
    """The command line ends one argument early (a NUL over the space before its last argument)."""
    at = loaded.plan.find(Blob.CMDLINE).addr
    text = mem.read_cstring(at, L.CMDLINE_MAX_SIZE)
    cut = text.rfind(b" ")
    if cut < 0:
        raise ConfigError("cmdline-cut: the command line has a single argument; nothing to cut")
    mem.write(at + cut, b"\0")


def madt_cpu_missing(loaded, mem, cpus: int) -> None:
    """The MADT lists one vCPU fewer than the VM has (its last Local APIC entry left out)."""
    from ..boot.acpi import build_acpi_tables, build_madt

    if loaded.rsdp_addr is None:
        raise ConfigError("madt-cpu-missing: the cell has no ACPI tables")
    madt_addr = next(addr for sig, addr, _ in build_acpi_tables(cpus, loaded.rsdp_addr).tables if sig == "APIC")
    # A shorter MADT at the same address: the XSDT still points at it, the DSDT after it stays put.
    mem.write(madt_addr, build_madt(cpus - 1))


FAULTS: dict[str, Fault] = {f.name: f for f in (
    Fault("rsdp-missing", "the RSDP address is not handed over (start_info.rsdp_paddr or "
          "boot_params.acpi_rsdp_addr left 0) and no legacy scan finds it",
          "boot.acpi_rsdp_addr, acpi.*, probe.verdict; acpi.table.*, cpu.possible, exit", rsdp_missing),
    Fault("memmap-ram-dropped", "32 MiB of RAM left out of the memory map",
          "boot.e820, boot.ram_total; memmap, MemTotal", memmap_ram_dropped),
    Fault("cmdline-cut", "the command line cut short by its last argument",
          "boot.cmdline; cmdline", cmdline_cut),
    Fault("madt-cpu-missing", "one vCPU left out of the MADT",
          "acpi.madt.cpus, smp.cpus_seen; cpu.possible, cpu.online, ACPI APIC length", madt_cpu_missing,
          min_cpus=2),
)}


def fault_hook(name: str, cpus: int):
    """The MicroVM ``mutate`` hook for fault ``name``."""
    fault = FAULTS[name]

    def mutate(loaded, mem):
        fault.apply(loaded, mem, cpus)
        return loaded

    return mutate
