"""The built-in probe's fingerprint: its ``key=value`` report (pvhboot.probe.report) in one namespace.

The probe reports what it was handed under the name of the structure it read: ``start_info.*`` and
``pvh_bootparams.*`` (the boot_params it builds from start_info as Linux's PVH code does) at the PVH
entry, ``boot_params.*`` at the 64-bit Linux entry.  To compare the paths, the kernel's view is
written once under ``boot.*`` (what a Linux kernel would hold in its boot_params), plus the facts
both entries report under the same name (ACPI, SMP, the image), the verdict, and ``entry.state``.
"""
from __future__ import annotations

from ..probe.report import parse_report
from .sanitize import e820_text, ram_total, sanitize_e820

# The facts both entries report under the same name, compared as they are.
_SHARED_PREFIXES = ("probe.version", "probe.image", "cpu.", "acpi.", "smp.")
# The kernel's view: boot.<name> <- (fact at the PVH entry, fact at the linux64 entry).
_BOOT_VIEW = {
    "version": ("pvh_bootparams.version", "boot_params.version"),
    "type_of_loader": ("pvh_bootparams.type_of_loader", "boot_params.type_of_loader"),
    "hardware_subarch": ("pvh_bootparams.hardware_subarch", "boot_params.hardware_subarch"),
    "cmd_line_ptr": ("pvh_bootparams.cmd_line_ptr", "boot_params.cmd_line_ptr"),
    "ramdisk_image": ("pvh_bootparams.ramdisk_image", "boot_params.ramdisk_image"),
    "ramdisk_size": ("pvh_bootparams.ramdisk_size", "boot_params.ramdisk_size"),
    "initrd_head": ("start_info.mod.0.head", "boot_params.ramdisk.head"),
    "acpi_rsdp_addr": ("start_info.rsdp_paddr", "boot_params.acpi_rsdp_addr"),
    "cmdline": ("start_info.cmdline", "boot_params.cmdline"),
    "cmdline_len": ("start_info.cmdline_len", "boot_params.cmdline_len"),
}


def _hexnorm(value: str) -> str:
    """'0x0' and '0' (the probe prints some fields one way, some the other) -> one spelling."""
    try:
        return hex(int(value, 0))
    except ValueError:
        return value


def probe_fingerprint(console: bytes | str) -> dict[str, str]:
    rep = parse_report(console)
    facts = rep.facts
    pvh = facts.get("probe.protocol") == "pvh"
    fp: dict[str, str] = {}
    for key, value in facts.items():
        if key.startswith(_SHARED_PREFIXES) and key != "acpi.rsdp":
            fp[key] = value
    fp["acpi.rsdp_source"] = facts.get("acpi.rsdp_source", "")
    side = 0 if pvh else 1
    for name, keys in _BOOT_VIEW.items():
        value = facts.get(keys[side])
        if value is not None:
            fp[f"boot.{name}"] = value if name in ("cmdline", "initrd_head") else _hexnorm(value)
    e820 = sanitize_e820(rep.table("pvh_bootparams.e820" if pvh else "boot_params.e820"))
    fp["boot.e820"] = e820_text(e820)
    fp["boot.ram_total"] = str(ram_total(e820))
    if pvh:
        fp["entry.state"] = (f"32-bit cr0={facts.get('entry.cr0')} cr4={facts.get('entry.cr4')} "
                             f"efer={facts.get('entry.efer')}")
    else:
        fp["entry.state"] = (f"64-bit cr0={facts.get('entry64.cr0')} cr4={facts.get('entry64.cr4')} "
                             f"efer={facts.get('entry64.efer')}")
    fp["probe.unverifiable"] = " ".join(sorted(r.name for r in rep.rules if r.status == "unverifiable")) or "none"
    fp["probe.verdict"] = ("PASS" if rep.passed else
                           "INCOMPLETE" if not rep.complete else "FAIL: " + "; ".join(rep.failed))
    return fp


def probe_booted(console: bytes | str) -> bool:
    """The probe reached its verdict (a FAIL verdict is a fingerprint too: its rules are the finding)."""
    return parse_report(console).complete
