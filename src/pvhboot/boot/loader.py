"""``load_guest``: write every blob of a :class:`MemoryPlan` into GuestMemory and return the boot
vCPU's state.  The only code in boot/ that touches guest memory in bulk (kernel, initrd)."""
from __future__ import annotations

import os

from ..errors import BootError, ConfigError, LayoutError
from ..files import INITRD_LIMIT, open_regular
from ..memory import layout as L
from .acpi import configure_acpi
from .config import BootConfig, LoadedGuest, MemoryPlan
from .cpu_state import build_cpu_state, build_gdt, build_page_tables
from .linux import build_boot_params, configure_zero_page, synthesize_setup_header
from .plan import bzimage_setup_header, encode_cmdline, kernel_blobs
from .pvh import configure_start_info


def _load_kernel(mem, kernel, plan: MemoryPlan, fresh: bool) -> None:
    blobs, _ = kernel_blobs(kernel, plan.protocol)
    fd = _open_kernel_file(kernel) if any(b.source is getattr(kernel.elf, "data", None) for b in blobs) else None
    try:
        for b in blobs:
            if b.filesz:
                if fd is not None and b.source is kernel.elf.data:
                    # The vmlinux file itself: its pages are mapped copy-on-write where the file
                    # offset and the guest address agree modulo the page size (PT_LOAD segments do),
                    # the rest is read; ~30 MB of a distro kernel are then not copied (bench 3).
                    mem.load_file(b.addr, fd, b.offset, b.filesz)
                else:
                    # A memoryview slice of the (possibly mmapped) file: one copy, straight into RAM.
                    mem.write(b.addr, memoryview(b.source)[b.offset : b.offset + b.filesz])
            if b.zero_fill and b.memsz > b.filesz and not fresh:
                # The ELF bss.  Fresh anonymous mappings are already zero; a reused one is not.
                mem.view(b.addr + b.filesz, b.memsz - b.filesz)[:] = bytes(b.memsz - b.filesz)
    finally:
        if fd is not None:
            os.close(fd)


def _open_kernel_file(kernel) -> int | None:
    """A read-only fd on the ELF file ``kernel`` was described from, if its path still names that
    very file (same device, inode, size and mtime as when load_kernel read it); else None (copy)."""
    extra = getattr(kernel, "extra", None) or {}
    ident = extra.get("file_id") if getattr(kernel, "format", None) == "elf" else None
    if ident is None:
        return None
    try:
        fd = os.open(kernel.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == ident and st.st_size == len(kernel.elf.data):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _load_initrd(mem, path: str, addr: int, size: int) -> None:
    view = mem.view(addr, size)
    fd = open_regular(path, "--initrd", INITRD_LIMIT)  # never blocks on a fifo, never reads a device
    try:
        got = 0
        while got < size:
            n = os.readv(fd, [view[got:]])
            if not n:
                break
            got += n
    except OSError as e:
        raise ConfigError(f"initrd {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if got != size:
        raise BootError(f"initrd {path} changed size while loading ({got} of {size} bytes read)")


def load_guest(kernel, config: BootConfig, plan: MemoryPlan, mem, *, fresh: bool = True) -> LoadedGuest:
    """Write kernel, initrd, command line, protocol structures, ACPI tables, GDT/IDT and page tables.

    ``fresh`` says ``mem`` is newly mapped (all zero), so bss and unused tables need no clearing.
    """
    for gpa, size in plan.ram_ranges:
        if not mem.contains(gpa, size):
            raise LayoutError(f"guest memory does not back the planned RAM {gpa:#x}+{size:#x}")
    _load_kernel(mem, kernel, plan, fresh)

    names = {p.name: p for p in plan.placements}
    initrd = names.get("initrd")
    if initrd is not None:
        if config.initrd is None:
            raise BootError("the plan has an initrd but the configuration names no file")
        _load_initrd(mem, config.initrd, initrd.addr, initrd.size)

    cmdline = encode_cmdline(kernel, config.cmdline)
    cmdline_addr = names["cmdline"].addr
    mem.write(cmdline_addr, cmdline)

    rsdp_addr = configure_acpi(mem, config.cpus, L.RSDP_ADDR) if config.acpi else None

    gdt = build_gdt(plan.protocol)
    mem.write(L.BOOT_GDT_START, gdt)
    mem.write(L.BOOT_IDT_START, bytes(L.BOOT_IDT_SIZE))

    cr3 = 0
    if plan.protocol == "pvh":
        modules = [(initrd.addr, initrd.size)] if initrd is not None else []
        configure_start_info(mem, start_info_addr=L.PVH_INFO_START,
                             version=config.start_info_version, cmdline_addr=cmdline_addr,
                             rsdp_addr=rsdp_addr, modlist_addr=L.MODLIST_START, modules=modules,
                             memmap_addr=L.MEMMAP_START, e820=plan.e820)
        boot_info = L.PVH_INFO_START
    else:
        if kernel.bzimage is not None:
            header = bzimage_setup_header(kernel)
        else:
            header = synthesize_setup_header(code32_start=min(p.addr for p in plan.placements
                                                              if p.name.startswith("kernel")))
        params = build_boot_params(header=header, e820=plan.e820, cmdline_addr=cmdline_addr,
                                   initrd=(initrd.addr, initrd.size) if initrd is not None else None,
                                   rsdp_addr=rsdp_addr)
        configure_zero_page(mem, L.ZERO_PAGE_START, params)
        boot_info = L.ZERO_PAGE_START
        if plan.protocol == "linux64":
            mem.write(L.PML4_START, build_page_tables(L.PML4_START, L.PDPTE_START, L.PDE_START,
                                                      L.IDENTITY_MAP_SIZE))
            cr3 = L.PML4_START

    cpu = build_cpu_state(plan.protocol, entry=plan.entry, boot_info=boot_info,
                          gdt_base=L.BOOT_GDT_START, gdt_size=len(gdt), idt_base=L.BOOT_IDT_START,
                          idt_size=L.BOOT_IDT_SIZE, stack_pointer=L.BOOT_STACK_POINTER, cr3=cr3)
    return LoadedGuest(plan=plan, cpu=cpu, rsdp_addr=rsdp_addr,
                       extra={"boot_info": boot_info, "cmdline_addr": cmdline_addr})
