"""`pvhboot inspect KERNEL [--json]`: what is this kernel file, and how can it be booted?"""
from __future__ import annotations

from ..abi.xen_notes import DESCRIPTIONS
from ..image import STARTUP_64_OFFSET, KernelImage, load_kernel
from ._util import emit_report, rich_console


def add_parser(subparsers):
    p = subparsers.add_parser("inspect", help="describe a kernel (ELF vmlinux or bzImage)",
                              description="Describe a kernel file: format, entry points per boot "
                                          "protocol, Xen ELF notes, load segments, setup header.")
    p.add_argument("kernel", metavar="KERNEL", help="ELF vmlinux or bzImage")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return p


def run(args) -> int:
    kernel = load_kernel(args.kernel)
    report = build_report(kernel)
    emit_report(report, args.json, print_report)
    return 0


def _json_value(value):
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, tuple):
        return list(value)
    return value


def build_report(k: KernelImage) -> dict:
    """The JSON document `inspect --json` prints (pure data: ints, strings, lists, dicts)."""
    elf, bz = k.elf, k.bzimage
    reloc = elf.reloc_window if elf else None
    report: dict = {
        "path": k.path,
        "format": k.format,
        "entries": {"pvh": k.entries.pvh, "linux32": k.entries.linux32,
                    "linux64": k.entries.linux64, "xen_pv": k.entries.xen_pv},
        "xen_notes": [{"type": n.type, "name": n.name, "value": _json_value(n.value),
                       "descsz": len(n.desc), "desc": n.desc.hex()} for n in k.xen_notes],
        "segments": [{"paddr": s.paddr, "vaddr": s.vaddr, "offset": s.offset, "filesz": s.filesz,
                      "memsz": s.memsz, "flags": s.flags, "align": s.align} for s in k.segments],
        "boot_protocol": f"{bz.boot_protocol[0]}.{bz.boot_protocol[1]:02d}" if bz else None,
        "compression": bz.compression if bz else None,
        "linux_version": k.linux_version,
        "build_id": elf.build_id if elf else None,
        # the window a PVH loader may move the kernel in (absent fields: Xen's defaults)
        "phys32_reloc": reloc.to_json() if reloc is not None else None,
        # the table a loader applies to move the virtual base (pvhboot boot --kaslr, PVH)
        "relocations": _relocations(elf),
        "elf_class": elf.elf_class if elf else None,
        "machine": elf.machine if elf else None,
        "e_entry": elf.e_entry if elf else None,
    }
    if bz:
        report.update({
            "setup_header": dict(bz.header),
            "setup_size": bz.setup_size,
            "payload_offset": bz.payload_offset,
            "payload_length": bz.payload_length,
            "startup_64_offset": STARTUP_64_OFFSET,
            "kernel_version_string": bz.version_string,
        })
    return report


def _relocations(elf) -> dict | None:
    from ..image.relocs import read_relocations

    r = read_relocations(elf) if elf is not None else None
    return None if r is None else {"rel32": len(r.rel32), "inv32": len(r.inv32), "rel64": len(r.rel64)}


def _hex(v) -> str:
    return "-" if v is None else f"{v:#x}"


def print_report(r: dict) -> None:
    from rich.markup import escape  # the path and the image's strings are data, never markup
    from rich.table import Table

    console = rich_console()
    summary = Table(show_header=False, box=None, title=escape(r["path"]), title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    fmt = r["format"] + (f" (ELF{r['elf_class']}, {r['machine']})" if r["elf_class"] else "")
    summary.add_row("format", escape(fmt))
    if r["boot_protocol"]:
        summary.add_row("boot protocol", r["boot_protocol"])
        summary.add_row("compression", escape(str(r["compression"])))
    summary.add_row("linux version", escape(r["linux_version"] or "-"))
    summary.add_row("build id", escape(r["build_id"] or "-"))
    for proto, addr in r["entries"].items():
        summary.add_row(f"entry {proto}", _hex(addr))
    if r["phys32_reloc"]:
        w = r["phys32_reloc"]
        summary.add_row("phys32 reloc", f"load anywhere in [{w['min']:#x}, {w['max']:#x}] aligned to {w['align']:#x}")
    if r.get("relocations"):
        summary.add_row("relocations", ", ".join(f"{n} {k}" for k, n in r["relocations"].items())
                        + " (the virtual base can move)")
    console.print(summary)

    if r.get("setup_header"):
        h = r["setup_header"]
        t = Table(title="setup header", title_justify="left")
        t.add_column("field")
        t.add_column("value", justify="right")
        for name in ("setup_sects", "version", "loadflags", "xloadflags", "code32_start",
                     "kernel_alignment", "relocatable_kernel", "pref_address", "init_size",
                     "cmdline_size", "initrd_addr_max", "payload_offset", "payload_length"):
            t.add_row(name, _hex(h[name]))
        console.print(t)

    t = Table(title="Xen ELF notes", title_justify="left")
    for col in ("type", "name", "value", "meaning"):
        t.add_column(col)
    for n in r["xen_notes"]:
        v = n["value"]
        shown = _hex(v) if isinstance(v, int) else ", ".join(map(_hex, v)) if isinstance(v, list) else str(v)
        t.add_row(str(n["type"]), escape(n["name"]), escape(shown), escape(DESCRIPTIONS.get(n["type"], "")))
    console.print(t if r["xen_notes"] else "no Xen ELF notes")

    t = Table(title="PT_LOAD segments" + (" (of the decompressed payload)" if r["format"] == "bzimage" else ""),
              title_justify="left")
    for col in ("paddr", "vaddr", "offset", "filesz", "memsz", "flags"):
        t.add_column(col, justify="right")
    for s in r["segments"]:
        flags = "".join(c if s["flags"] & bit else "-" for c, bit in (("R", 4), ("W", 2), ("X", 1)))
        t.add_row(_hex(s["paddr"]), _hex(s["vaddr"]), _hex(s["offset"]), _hex(s["filesz"]), _hex(s["memsz"]), flags)
    console.print(t)
