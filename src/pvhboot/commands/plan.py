"""`pvhboot plan KERNEL [--memory 512M] [--initrd F] [--cmdline S] [--cpus N] [--protocol P]
[--load-addr ADDR | --kaslr[=SEED]] [--json]`:
the builder's dry run -- the memory map the guest would be told and where every blob would go.
Nothing is mapped or written."""
from __future__ import annotations

from ..abi.e820 import E820Type
from ..boot import BootConfig, plan_guest, resolve_protocol
from ..boot.plan import format_size
from ..image import load_kernel
from ..memory import layout as L
from ._util import emit_report, rich_console
from .vm_options import PLAN_OPTIONS, add_vm_options, describe_placement, vm_config_from_args


def add_parser(subparsers):
    p = subparsers.add_parser("plan", help="dry run: print the guest memory map and blob placement",
                              description="Plan guest memory for KERNEL without running it: RAM "
                                          "ranges, the e820 map the guest is told, and the address "
                                          "of every blob (kernel, initrd, start_info, zero page, "
                                          "ACPI tables, page tables, GDT).")
    p.add_argument("kernel", metavar="KERNEL", help="ELF vmlinux or bzImage")
    add_vm_options(p, include=PLAN_OPTIONS)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return p


def build_report(kernel, config: BootConfig, plan) -> dict:
    where = plan.kernel_placement
    return {
        "kernel": kernel.path,
        "format": kernel.format,
        "protocol": plan.protocol.value,
        "entry": plan.entry,
        "kernel_placement": {"load_addr": where.load_addr, "link_addr": where.link_addr,
                             "offset": where.offset, "kaslr_seed": where.kaslr_seed,
                             "virt_offset": where.virt_offset,
                             "relocations": len(where.relocations) if where.relocations else None,
                             "phys32_reloc": where.window.to_json() if where.window else None},
        "memory": plan.memory,
        "cpus": config.cpus,
        "cmdline": config.cmdline,
        "ram_ranges": [{"addr": a, "size": s} for a, s in plan.ram_ranges],
        "mmio_hole": {"addr": L.MMIO_HOLE_START, "size": L.MMIO_HOLE_SIZE},
        "e820": [{"addr": r.addr, "size": r.size, "type": E820Type(r.type).name}
                 for r in plan.e820],
        "placements": [{"name": p.name, "addr": p.addr, "size": p.size, "align": p.align}
                       for p in plan.placements],
    }


def print_report(report: dict) -> None:
    from rich.markup import escape  # the kernel's path is data, never markup
    from rich.table import Table

    console = rich_console()
    console.print(f"[bold]{escape(report['kernel'])}[/bold] ({report['format']}): protocol "
                  f"[bold]{report['protocol']}[/bold], entry {report['entry']:#x}, "
                  f"{format_size(report['memory'])} RAM, {report['cpus']} vCPU(s)")
    where = report["kernel_placement"]
    if where["phys32_reloc"]:
        w = where["phys32_reloc"]
        console.print(f"PHYS32_RELOC window: {format_size(w['align'])}-aligned load addresses in "
                      f"[{w['min']:#x}, {w['max']:#x}]")
    line = describe_placement(where["load_addr"], where["link_addr"], where["kaslr_seed"], where["virt_offset"])
    if line:
        console.print(line)
    e820 = Table(title="Memory map told to the guest (e820 / PVH memmap)")
    for col in ("start", "end", "size", "type"):
        e820.add_column(col, justify="right" if col != "type" else "left")
    rows = [(r["addr"], r["size"], r["type"]) for r in report["e820"]]
    hole = report["mmio_hole"]
    rows.append((hole["addr"], hole["size"], "(MMIO hole: IOAPIC, LAPIC, devices)"))
    for addr, size, typ in sorted(rows):
        e820.add_row(f"{addr:#012x}", f"{addr + size:#012x}", format_size(size), typ)
    console.print(e820)
    blobs = Table(title="Placements")
    for col in ("blob", "start", "end", "size", "align"):
        blobs.add_column(col, justify="left" if col == "blob" else "right")
    for p in report["placements"]:
        blobs.add_row(p["name"], f"{p['addr']:#012x}", f"{p['addr'] + p['size']:#012x}",
                      format_size(p["size"]), str(p["align"]))
    console.print(blobs)


def run(args) -> int:
    vm = vm_config_from_args(args)
    kernel = load_kernel(args.kernel)  # checks the file itself (pvhboot.files)
    config = vm.boot_config(resolve_protocol(kernel, vm.protocol))
    plan = plan_guest(kernel, config)
    report = build_report(kernel, config, plan)
    emit_report(report, args.json, print_report)
    return 0
