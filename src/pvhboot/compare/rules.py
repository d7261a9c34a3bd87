"""Field classes: what must be equal on every entry path, and what may differ and why.

A fingerprint is a flat ``{field: value}`` dict.  Every field is compared across the paths of one
cell configuration (same vCPUs, same memory).  A field that matches no rule here must be equal; a
rule below either allows a difference (its ``reason`` is printed beside the row, and the README
lists the same text) or marks a field as always shown (the KASLR state).

The first matching rule wins; patterns are :func:`fnmatch.fnmatchcase` globs on the field name.
Reasons cite where the difference comes from, so a reader can check that it really is by design.
"""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

MUST_EQUAL = "must-equal"
ALLOWED = "allowed"


@dataclass(frozen=True)
class FieldRule:
    pattern: str
    kind: str  # MUST_EQUAL or ALLOWED
    reason: str
    always_show: bool = False  # an explained row even when every path agrees (KASLR)


_PVH_SYNTH = ("a PVH entry has no bzImage setup header: Linux builds boot_params from hvm_start_info "
              "(arch/x86/platform/pvh/enlighten.c, init_pvh_bootparams) and fills only version, "
              "type_of_loader, cmd_line_ptr, the ramdisk and the e820 table; a loader booting a bzImage "
              "copies the image's whole setup header (Documentation/arch/x86/boot.rst), pvhboot's "
              "linux64 entry of a vmlinux synthesises one, and the decompressor updates a few fields")

_PVH_E820 = ("Linux's PVH code appends the ISA range 0xa0000-0x100000 as reserved to the memory map it "
             "copies from start_info (init_pvh_bootparams); the map the kernel kept after sanitising "
             "(memmap, /sys/firmware/memmap) must be equal")

#: Rules for the built-in probe's fingerprint (pvhboot.compare.probe).
PROBE_RULES: tuple[FieldRule, ...] = (
    FieldRule("entry.state", ALLOWED,
              "the protocols differ by definition: PVH enters in 32-bit protected mode with paging off "
              "(Xen docs/misc/pvh.pandoc), the 64-bit Linux entry in long mode on an identity map "
              "(boot.rst, 64-bit boot protocol)"),
    FieldRule("acpi.rsdp_source", ALLOWED,
              "the RSDP's address travels in start_info.rsdp_paddr on PVH and in boot_params.acpi_rsdp_addr "
              "on the Linux protocol; the address itself (boot.acpi_rsdp_addr) must be equal"),
    FieldRule("boot.version", ALLOWED,
              "Linux's PVH code writes boot protocol 2.12 into the boot_params it builds; the Linux "
              "protocol's comes from the kernel's setup header"),
    FieldRule("boot.type_of_loader", ALLOWED,
              "Linux's PVH code writes 0xb0 (0x90 on Xen) as the loader id; on the Linux protocol the "
              "loader writes its own (pvhboot: 0xff, boot.rst's 'undefined')"),
)

#: Rules for a real Linux fingerprint (pvhboot.compare.linux).
LINUX_RULES: tuple[FieldRule, ...] = (
    FieldRule("kaslr.state", ALLOWED,
              "KASLR is done by the bzImage decompressor (arch/x86/boot/compressed/kaslr.c): the PVH "
              "entry and a vmlinux's linux64 entry never run it, so they never randomise; compare boots "
              "with nokaslr unless --kaslr, and then every offset is 0", always_show=True),
    FieldRule("kaslr.offset", ALLOWED,
              "see kaslr.state: with --kaslr the bzImage paths are placed at random, the others never"),
    # boot_params as the kernel kept it (/sys/kernel/boot_params/data).
    FieldRule("bp.hdr.hardware_subarch", MUST_EQUAL, "the platform the kernel sets itself up for"),
    FieldRule("bp.hdr.hardware_subarch_data", MUST_EQUAL, "the platform the kernel sets itself up for"),
    FieldRule("bp.hdr.cmd_line_ptr", MUST_EQUAL, "where the loader put the command line"),
    FieldRule("bp.hdr.ramdisk_image", MUST_EQUAL, "where the loader put the initramfs"),
    FieldRule("bp.hdr.ramdisk_size", MUST_EQUAL, "the initramfs the kernel unpacked"),
    FieldRule("bp.hdr.setup_data", MUST_EQUAL, "the setup_data chain the kernel parsed"),
    FieldRule("bp.hdr.*", ALLOWED, _PVH_SYNTH),
    FieldRule("bp.e820_entries", ALLOWED, _PVH_E820),
    FieldRule("bp.e820_table.*", ALLOWED, _PVH_E820),
    FieldRule("bp.sentinel", ALLOWED,
              "boot.rst: a loader that copies the setup header must clear the sentinel byte; the bzImage "
              "has it set, the zero page a PVH entry builds starts all zero"),
)


def rules_for(kind: str) -> tuple[FieldRule, ...]:
    return PROBE_RULES if kind == "probe" else LINUX_RULES


def classify(field: str, rules: tuple[FieldRule, ...]) -> FieldRule | None:
    """The first rule whose pattern matches ``field``, or None (must be equal, no reason needed)."""
    for rule in rules:
        if fnmatchcase(field, rule.pattern):
            return rule
    return None


def allowed_differences(kind: str) -> list[tuple[str, str]]:
    """(pattern, reason) of every allowed difference: the list the README carries."""
    return [(r.pattern, r.reason) for r in rules_for(kind) if r.kind == ALLOWED]
