"""``load_guest``: write every blob of a :class:`BootPlan` into GuestMemory and return the boot
vCPU's state.  The only code in boot/ that touches guest memory in bulk (kernel, initrd).  It
decides nothing: every address, byte string and header comes from the plan."""
from __future__ import annotations

import os

from ..errors import BootError, ConfigError, LayoutError
from ..files import INITRD_LIMIT, open_regular
from ..image.model import Protocol
from ..image.relocs import apply_relocations
from ..memory import GuestMemory
from ..memory import layout as L
from .acpi import configure_acpi
from .config import Blob, BootPlan, LoadedGuest
from .cpu_state import build_cpu_state, build_gdt, build_page_tables
from .linux import build_boot_params, configure_zero_page
from .pvh import configure_start_info


def _load_kernel(mem: GuestMemory, plan: BootPlan, fresh: bool) -> None:
    segments = plan.segments
    fd = _open_kernel_file(plan.kernel) if any(s.from_elf_file for s in segments) else None
    try:
        for s in segments:
            if s.filesz:
                if fd is not None and s.from_elf_file:
                    # The vmlinux file itself: its pages are mapped copy-on-write where the file
                    # offset and the guest address agree modulo the page size (PT_LOAD segments do),
                    # the rest is read; ~30 MB of a distro kernel are then not copied (bench 3).
                    mem.load_file(s.addr, fd, s.offset, s.filesz)
                else:
                    # A memoryview slice of the (possibly mmapped) file: one copy, straight into RAM.
                    mem.write(s.addr, memoryview(s.source)[s.offset : s.offset + s.filesz])
            if s.zero_fill and s.memsz > s.filesz and not fresh:
                # The ELF bss.  Fresh anonymous mappings are already zero; a reused one is not.
                mem.view(s.addr + s.filesz, s.memsz - s.filesz)[:] = bytes(s.memsz - s.filesz)
    finally:
        if fd is not None:
            os.close(fd)


def _open_kernel_file(kernel) -> int | None:
    """A read-only fd on the ELF file ``kernel`` was described from, if its path still names that
    very file (same device, inode, size and mtime as when load_kernel read it); else None (copy)."""
    ident = kernel.file_id
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


def load_guest(plan: BootPlan, mem: GuestMemory, *, fresh: bool = True) -> LoadedGuest:
    """Write kernel, initrd, command line, protocol structures, ACPI tables, GDT/IDT and page tables
    where ``plan`` says.

    ``fresh`` says ``mem`` is newly mapped (all zero), so bss and unused tables need no clearing.
    """
    config = plan.config
    for gpa, size in plan.ram_ranges:
        if not mem.contains(gpa, size):
            raise LayoutError(f"guest memory does not back the planned RAM {gpa:#x}+{size:#x}")
    _load_kernel(mem, plan, fresh)
    where = plan.kernel_placement
    if where.virt_offset:  # --kaslr: the kernel's virtual base moves (what the bzImage decompressor does)
        apply_relocations(where.relocations, where.virt_offset,
                          [(s.addr - where.offset, mem.view(s.addr, s.filesz)) for s in plan.segments if s.filesz])

    initrd = plan.get(Blob.INITRD)
    if initrd is not None:
        if config.initrd is None:
            raise BootError("the plan has an initrd but the configuration names no file")
        _load_initrd(mem, config.initrd, initrd.addr, initrd.size)

    cmdline_addr = plan.find(Blob.CMDLINE).addr
    mem.write(cmdline_addr, plan.cmdline)

    rsdp_addr = (configure_acpi(mem, config.cpus, plan.find(Blob.ACPI_RSDP).addr, config.virtio_mmio)
                 if config.acpi else None)

    gdt, idt = plan.find(Blob.GDT), plan.find(Blob.IDT)
    gdt_bytes = build_gdt(plan.protocol)
    mem.write(gdt.addr, gdt_bytes)
    mem.write(idt.addr, bytes(idt.size))

    cr3 = 0
    boot_info = plan.boot_info.addr
    if plan.protocol is Protocol.PVH:
        modlist, memmap = plan.get(Blob.MODLIST), plan.get(Blob.MEMMAP)
        configure_start_info(mem, start_info_addr=boot_info,
                             version=config.start_info_version, cmdline_addr=cmdline_addr,
                             rsdp_addr=rsdp_addr, modlist_addr=modlist.addr if modlist else 0,
                             modules=[(initrd.addr, initrd.size)] if initrd is not None else [],
                             memmap_addr=memmap.addr if memmap else 0, e820=plan.e820)
    else:
        params = build_boot_params(header=plan.setup_header, e820=plan.e820, cmdline_addr=cmdline_addr,
                                   initrd=(initrd.addr, initrd.size) if initrd is not None else None,
                                   rsdp_addr=rsdp_addr)
        configure_zero_page(mem, boot_info, params)
        if plan.protocol is Protocol.LINUX64:
            cr3 = plan.find(Blob.PAGE_TABLES).addr
            mem.write(cr3, build_page_tables(cr3, L.PDPTE_START, L.PDE_START, L.IDENTITY_MAP_SIZE))

    cpu = build_cpu_state(plan.protocol, entry=plan.entry, boot_info=boot_info,
                          gdt_base=gdt.addr, gdt_size=len(gdt_bytes), idt_base=idt.addr,
                          idt_size=idt.size, stack_pointer=L.BOOT_STACK_POINTER, cr3=cr3)
    return LoadedGuest(plan=plan, cpu=cpu, rsdp_addr=rsdp_addr)
