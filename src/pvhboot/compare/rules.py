"""Field classes: what must be equal on every entry path, and what may differ and why.

A fingerprint is a flat ``{field: value}`` dict.  Every field is compared across the paths of one
cell configuration (same vCPUs, same memory).  A field that matches no rule here must be equal; a
rule below either allows a difference (its ``reason`` is printed beside the row, and the README
lists the same text) or marks a field as always shown (the KASLR state).

The first matching rule wins; patterns are :func:`fnmatch.fnmatchcase` globs on the field name.
Reasons cite where the difference comes from, so a reader can check that it really is by design.
"""
from __future__ import annotations

from collections.abc import Callable
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
    # An allowed difference only when this holds: when(values, fingerprints, protocols), each a dict
    # by column; otherwise the difference is a finding (it is not the one the reason explains).
    when: Callable[[dict, dict, dict], bool] | None = None

    def allows(self, values: dict, fingerprints: dict, protocols: dict) -> bool:
        return self.kind == ALLOWED and (self.when is None or self.when(values, fingerprints, protocols))


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

# 5-level paging: the bzImage decompressor turns it on when the CPU has LA57 (arch/x86/boot/compressed/
# pgtable_64.c, paging_prepare); a 64-bit kernel entered directly keeps the loader's 4-level paging and
# clears the la57 feature (arch/x86/kernel/head64.c check_la57_support, cpu/common.c).  With 5-level
# paging MAX_PHYSMEM_BITS is 52 instead of 46 (arch/x86/include/asm/sparsemem.h), so the memblock-
# allocated mem_section root array (mm/sparse.c, SPARSEMEM_EXTREME) grows from 16 KiB to 1 MiB, and one
# more page-table level is allocated: MemTotal is lower by that much.
LA57_MEMTOTAL_KIB = 1024 - 16  # plus up to LA57_PAGE_TABLE_KIB of page-table pages
LA57_PAGE_TABLE_KIB = 16
_LA57 = ("5-level paging is turned on only by the bzImage decompressor when the CPU has LA57 "
         "(arch/x86/boot/compressed/pgtable_64.c); the PVH entry and a vmlinux's 64-bit entry keep the "
         "loader's 4-level paging and clear the la57 feature (arch/x86/kernel/head64.c)")


def _kib(v: str | None) -> int | None:
    try:
        return int(v.split()[0]) if v else None
    except ValueError:
        return None


def _memtotal_explained_by_la57(values: dict, fps: dict, protocols: dict) -> bool:
    """Equal within each paging mode, and the 5-level paths lower by the mem_section roots' growth
    (1008 KiB) plus at most a few page-table pages (1012 KiB measured with the Debian 6.1 kernel)."""
    by_mode: dict[str, set] = {}
    for col, v in values.items():
        by_mode.setdefault(fps[col].get("cpu.flag.la57", "none"), set()).add(_kib(v))
    if any(len(vs) != 1 or None in vs for vs in by_mode.values()) or len(by_mode) != 2:
        return False
    on = next(iter(by_mode[next(m for m in by_mode if m != "none")]))
    off = next(iter(by_mode["none"])) if "none" in by_mode else None
    return off is not None and LA57_MEMTOTAL_KIB <= off - on <= LA57_MEMTOTAL_KIB + LA57_PAGE_TABLE_KIB


def _rsdp_only_pvh_zero(values: dict, fps: dict, protocols: dict) -> bool:
    others = {v for c, v in values.items() if protocols.get(c) != "pvh"}
    return len(others) <= 1 and all(v == "0x0" for c, v in values.items() if protocols.get(c) == "pvh")


#: Rules for a real Linux fingerprint (pvhboot.compare.linux).
LINUX_RULES: tuple[FieldRule, ...] = (
    FieldRule("kaslr.state", ALLOWED,
              "KASLR is done by the bzImage decompressor (arch/x86/boot/compressed/kaslr.c): the PVH "
              "entry and a vmlinux's linux64 entry never run it, so they never randomise; compare boots "
              "with nokaslr unless --kaslr, and then every offset is 0", always_show=True),
    FieldRule("kaslr.offset", ALLOWED,
              "see kaslr.state: with --kaslr the bzImage paths are placed at random, the others never"),
    FieldRule("cpu.flag.la57", ALLOWED, _LA57),
    FieldRule("MemTotal", ALLOWED,
              f"{_LA57}; with 5-level paging MAX_PHYSMEM_BITS is 52, not 46 (asm/sparsemem.h), so the "
              f"mem_section root array (mm/sparse.c) takes 1 MiB instead of 16 KiB, plus a few page-table "
              f"pages: {LA57_MEMTOTAL_KIB}-{LA57_MEMTOTAL_KIB + LA57_PAGE_TABLE_KIB} kB less, and only that",
              when=_memtotal_explained_by_la57),
    # boot_params as the kernel kept it (/sys/kernel/boot_params/data).
    FieldRule("bp.acpi_rsdp_addr", ALLOWED,
              "Linux's PVH code keeps the RSDP address in its copy of hvm_start_info and hands it to ACPI "
              "through x86_init.acpi.get_root_pointer (pvh_get_root_pointer, arch/x86/platform/pvh/"
              "enlighten.c), leaving boot_params.acpi_rsdp_addr 0; allowed only as 0 on PVH paths with "
              "every other path equal", when=_rsdp_only_pvh_zero),
    FieldRule("bp.scratch", ALLOWED,
              "the 32-bit entry (startup_32, arch/x86/boot/compressed/head_64.S) uses boot_params.scratch "
              "as a one-word stack for `call 1f; popl` to find its own address: a return address stays"),
    FieldRule("boot_params.version", ALLOWED, "the same as bp.hdr.version (/sys/kernel/boot_params/version): "
              + _PVH_SYNTH),
    FieldRule("bp.hdr.hardware_subarch", MUST_EQUAL, "the platform the kernel sets itself up for"),
    FieldRule("bp.hdr.hardware_subarch_data", MUST_EQUAL, "the platform the kernel sets itself up for"),
    FieldRule("bp.hdr.cmd_line_ptr", MUST_EQUAL, "where the loader put the command line"),
    FieldRule("bp.hdr.ramdisk_image", MUST_EQUAL, "where the loader put the initramfs"),
    FieldRule("bp.hdr.ramdisk_size", MUST_EQUAL, "the initramfs the kernel unpacked"),
    FieldRule("bp.hdr.setup_data", MUST_EQUAL, "the setup_data chain the kernel parsed"),
    FieldRule("bp.hdr.*", ALLOWED, _PVH_SYNTH),
    FieldRule("bp.e820_entries", ALLOWED, _PVH_E820),
    FieldRule("bp.e820_table.*", ALLOWED, _PVH_E820),
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
