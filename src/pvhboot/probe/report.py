"""Parse the probe's COM1 report into facts, rule results and a verdict.

The probe (``src/probe.c``) writes one line per item:

* ``key=value`` for a fact (``entry.cr0=0x1``, ``start_info.memmap.0=0x0 0x9fc00 1``);
* ``rule.<name>=<pass|fail|unverifiable> <what was seen>`` for each ABI rule it checked;
* ``PROBE PASS`` or ``PROBE FAIL: <rule>; <rule>`` last.

Serial output may carry noise: terminal escape sequences (QEMU ``-nographic``), carriage returns,
firmware or VMM messages, even text glued in front of a line.  The parser takes the report that
starts at the last ``probe.version=`` line, and finds keys anywhere in a line.  A report without a
verdict (the guest died mid-way) is *incomplete*: it fails as ``probe.incomplete``, naming the last
fact seen.

Rule names are stable; :data:`RULES` describes each one with the source it comes from.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

PASS, FAIL, UNVERIFIABLE = "pass", "fail", "unverifiable"
STATUSES = (PASS, FAIL, UNVERIFIABLE)

PVH = "Xen docs/misc/pvh.pandoc"
START_INFO = "xen/include/public/arch-x86/hvm/start_info.h"
LINUX_PVH = "Linux arch/x86/platform/pvh/enlighten.c"
BOOT_RST = "Linux Documentation/arch/x86/boot.rst"
ACPI = "ACPI 6.x chapter 5.2"

#: rule name -> (source, what the rule asks)
RULES: dict[str, tuple[str, str]] = {
    "load.bss_zeroed": ("ELF gABI", "memory beyond a segment's file size reads as zero"),
    "image.placement": ("xen/include/public/elfnote.h PHYS32_RELOC",
                        "the image runs at an address aligned as its note asks, inside the note's window"),
    "entry.cr0": (PVH, "CR0: PE set, every other writable bit clear (paging off)"),
    "entry.cr4": (PVH, "CR4: all bits clear"),
    "entry.efer": ("probe", "EFER.LME and LMA clear at a 32-bit entry"),
    "entry.eflags": (PVH, "EFLAGS: IF, TF and VM clear"),
    "entry.ebx": (PVH, "EBX holds the physical address of hvm_start_info (magic 0x336ec578)"),
    "entry.cs_base": (PVH, "CS base 0 (call pushes the load address of the call site)"),
    "entry.cs_flat": (PVH, "CS readable 32-bit code with limit 0xffffffff"),
    "entry.ds_flat": (PVH, "DS read/write, base 0, limit 0xffffffff"),
    "entry.es_flat": (PVH, "ES read/write, base 0, limit 0xffffffff"),
    "entry.ss_flat": (PVH, "SS read/write, base 0, limit 0xffffffff, 32-bit stack"),
    "entry.tr_busy": (PVH, "TR: busy TSS (descriptor type 0xb; ltr of a copy faults)"),
    "entry.tr_tss32": (PVH, "TR: a present 32-bit TSS"),
    "entry.tr_base": (PVH, "TR base 0"),
    "entry.tr_limit": (PVH, "TR limit 0x67"),
    "probe.exception32": ("probe", "no unexpected fault in the 32-bit entry code"),
    "start_info.version": (START_INFO, "version 0 or 1"),
    "start_info.aligned": (START_INFO, "hvm_start_info 8-byte aligned (uint64_t fields at multiples of 8)"),
    "start_info.memmap_present": (LINUX_PVH, "a memmap (version 1, entries > 0); off Xen Linux BUG()s without"),
    "start_info.memmap_entries": (LINUX_PVH, "at most 128 entries (boot_params.e820_table)"),
    "start_info.memmap_sorted": (START_INFO, "non-empty memmap entries sorted by address"),
    "start_info.memmap_nonoverlap": (START_INFO, "memmap entries do not overlap"),
    "start_info.memmap_types": (START_INFO, "non-empty memmap entries have types 1..7 (XEN_HVM_MEMMAP_TYPE_*)"),
    "start_info.memmap_no_empty": (START_INFO, "no empty (size 0) memmap entry: memmap_entries counts memory regions "
                                               "(Linux's e820 sanitizer drops empty ones)"),
    "start_info.memmap_covers_probe": (START_INFO, "the kernel image lies in RAM per the memmap"),
    "start_info.memmap_in_ram": ("issue 3", "the memmap table lies in RAM per the memmap"),
    "start_info.memmap_aligned": (START_INFO, "the memmap (hvm_memmap_table_entry[], 24 bytes each) 8-byte aligned"),
    "start_info.in_ram": ("issue 3", "hvm_start_info lies in RAM per the memmap"),
    "start_info.cmdline_nul": (START_INFO, "cmdline NUL-terminated within 2048 bytes (COMMAND_LINE_SIZE)"),
    "start_info.cmdline_in_ram": ("issue 3", "the cmdline lies in RAM per the memmap"),
    "start_info.modlist_in_ram": ("issue 3", "the modlist lies in RAM per the memmap"),
    "start_info.modlist_aligned": (START_INFO, "the modlist (hvm_modlist_entry[], 32 bytes each) 8-byte aligned"),
    "start_info.modules_in_ram": ("issue 3", "module data and module cmdlines lie in RAM"),
    "start_info.modules_not_over_probe": (START_INFO, "no module overlaps the kernel image"),
    "start_info.not_over_probe": (START_INFO, "no boot blob overlaps the kernel image"),
    "start_info.blobs_disjoint": (START_INFO, "start_info, memmap, modlist, cmdline, modules do not overlap"),
    "start_info.not_on_entry_stack": ("issue 10", "no boot blob within 4 KiB either side of the entry ESP (the "
                                                  "loader's own stack); passes when ESP is 0 (no stack handed over)"),
    "entry64.long_mode": (BOOT_RST, "64-bit entry in long mode (CR0.PG/PE, CR4.PAE, EFER.LME/LMA)"),
    "entry64.rflags": (BOOT_RST, "interrupts disabled (and no single-step)"),
    "entry64.selectors": (BOOT_RST, "CS = __BOOT_CS 0x10; DS, ES, SS = __BOOT_DS 0x18"),
    "entry64.gdt_boot_cs": (BOOT_RST, "GDT[0x10]: flat execute/read 64-bit code"),
    "entry64.gdt_boot_ds": (BOOT_RST, "GDT[0x18]: flat read/write data"),
    "entry64.identity_map": (BOOT_RST, "identity mapping of the low 4 GiB; running at the link address"),
    "boot_params.boot_flag": (BOOT_RST, "RSI -> boot_params with boot_flag 0xAA55"),
    "boot_params.header": (BOOT_RST, "setup_header magic \"HdrS\""),
    "boot_params.version": (BOOT_RST, "boot protocol 2.12 or later (64-bit entry)"),
    "boot_params.type_of_loader": (BOOT_RST, "type_of_loader set (obligatory)"),
    "boot_params.hardware_subarch": (BOOT_RST, "hardware_subarch 0 (X86_SUBARCH_PC)"),
    "boot_params.e820_entries": (BOOT_RST, "1..128 e820 entries"),
    "boot_params.e820_sorted": (BOOT_RST, "non-empty e820 entries sorted by address"),
    "boot_params.e820_nonoverlap": (BOOT_RST, "e820 entries do not overlap"),
    "boot_params.e820_types": (BOOT_RST, "non-empty e820 entries have types 1..7"),
    "boot_params.e820_no_empty": (BOOT_RST, "no empty (size 0) e820 entry"),
    "boot_params.e820_covers_probe": (BOOT_RST, "the kernel image lies in RAM per the e820"),
    "boot_params.in_ram": (BOOT_RST, "the zero page lies in RAM"),
    "boot_params.cmdline_nul": (BOOT_RST, "cmdline NUL-terminated within cmdline_size + 1"),
    "boot_params.cmdline_in_ram": (BOOT_RST, "the cmdline lies in RAM"),
    "boot_params.ramdisk_in_ram": (BOOT_RST, "the ramdisk lies in RAM"),
    "boot_params.not_over_probe": (BOOT_RST, "zero page, cmdline and ramdisk clear of the kernel image"),
    "acpi.rsdp": (ACPI, "an RSDP is given (rsdp_paddr / acpi_rsdp_addr) or found in the BIOS areas"),
    "acpi.rsdp_signature": (ACPI, "\"RSD PTR \" at the RSDP address"),
    "acpi.rsdp_checksum": (ACPI, "RSDP checksum (first 20 bytes)"),
    "acpi.rsdp_ext_checksum": (ACPI, "RSDP extended checksum (revision 2)"),
    "acpi.root_checksum": (ACPI, "XSDT (or RSDT) signature and checksum"),
    "acpi.table_checksums": (ACPI, "every table (and the DSDT) sums to 0"),
    "acpi.tables_not_in_ram": (ACPI, "ACPI tables lie outside RAM in the memory map"),
    "acpi.fadt_present": (ACPI, "a FADT (FACP)"),
    "acpi.madt_present": (ACPI, "a MADT (APIC)"),
    "acpi.madt_entries": (ACPI, "MADT entry lengths within the table"),
    "smp.bsp_in_madt": (ACPI, "the boot CPU's APIC id is in the MADT"),
    "smp.trampoline": ("probe", "a free RAM page below 1 MiB for the AP trampoline"),
    "smp.aps_started": ("Intel SDM 3A 8.4.4", "every MADT CPU starts on INIT/SIPI/SIPI and reports"),
    "smp.apic_ids": ("Intel SDM 3A 10.4.6", "each AP's CPUID APIC id equals its local APIC id, listed in the MADT"),
    "probe.exception": ("probe", "no unexpected exception in the probe"),
    "probe.incomplete": ("probe", "the report ends with a verdict (the guest did not die mid-way)"),
}

_ANSI = re.compile(r"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|[@-Z\\-_])")
_KEY = re.compile(r"(?:^|(?<=[\s\]>:|]))((?:rule\.)?[a-z][a-z0-9_]*(?:\.[A-Za-z0-9_]+)+)=(.*)$")
_VERDICT = re.compile(r"PROBE (PASS|FAIL)(?::\s*(.*))?")


@dataclass(frozen=True)
class RuleResult:
    name: str
    status: str  # pass | fail | unverifiable
    seen: str  # what the probe saw

    @property
    def source(self) -> str:
        return RULES.get(self.name, ("", ""))[0]

    @property
    def description(self) -> str:
        return RULES.get(self.name, ("", self.name))[1]


@dataclass(frozen=True)
class ProbeReport:
    facts: dict[str, str]
    rules: tuple[RuleResult, ...]
    verdict: str | None  # "pass", "fail", or None when the report has no verdict line
    verdict_failed: tuple[str, ...] = ()  # the names on the PROBE FAIL line
    noise: tuple[str, ...] = field(default=(), repr=False)  # lines that were not part of the report

    @property
    def complete(self) -> bool:
        return self.verdict is not None

    @property
    def passed(self) -> bool:
        return self.verdict == PASS and not self.failed

    @property
    def failed(self) -> tuple[str, ...]:
        """Failed rule names: the verdict's list, any failed rule line, probe.incomplete without verdict."""
        names = list(self.verdict_failed)
        names += [r.name for r in self.rules if r.status == FAIL and r.name not in names]
        return tuple(names)

    def rule(self, name: str) -> RuleResult | None:
        for r in self.rules:
            if r.name == name:
                return r
        return None

    def status(self, name: str) -> str | None:
        r = self.rule(name)
        return r.status if r else None

    def table(self, prefix: str) -> list[tuple[int, ...]]:
        """Numbered facts ``<prefix>.N=a b c`` (memmap, e820) as tuples of ints, in index order."""
        rows = []
        for key, value in self.facts.items():
            head, _, idx = key.rpartition(".")
            if head == prefix and idx.isdigit():
                rows.append((int(idx), tuple(int(v, 0) for v in value.split())))
        return [r for _, r in sorted(rows)]

    def int_fact(self, key: str) -> int | None:
        v = self.facts.get(key)
        try:
            return int(v.split()[0], 0) if v else None
        except ValueError:
            return None

    @property
    def last_fact(self) -> str | None:
        return next(reversed(self.facts), None)


def clean_lines(data: bytes | str) -> list[str]:
    text = data.decode("utf-8", "replace") if isinstance(data, (bytes, bytearray)) else data
    text = _ANSI.sub("", text)
    return [line.replace("\r", "").replace("\x00", "") for line in text.split("\n")]


def parse_report(data: bytes | str) -> ProbeReport:
    """Parse serial output holding one probe run (the last one when there are several)."""
    lines = clean_lines(data)
    start = 0
    for i, line in enumerate(lines):
        if "probe.version=" in line:
            start = i
    facts: dict[str, str] = {}
    rules: list[RuleResult] = []
    noise: list[str] = []
    verdict: str | None = None
    verdict_failed: tuple[str, ...] = ()
    for line in lines[start:]:
        v = _VERDICT.search(line)
        if v:
            verdict = v.group(1).lower()
            if verdict == FAIL:
                verdict_failed = tuple(n.strip() for n in (v.group(2) or "").split(";") if n.strip())
            break
        m = _KEY.search(line)
        if not m:
            if line.strip():
                noise.append(line)
            continue
        key, value = m.group(1), m.group(2).strip()
        if key.startswith("rule."):
            status, _, seen = value.partition(" ")
            if status in STATUSES:
                rules.append(RuleResult(key[5:], status, seen.strip()))
                continue
        facts[key] = value
    if verdict is None and (facts or rules):
        rules.append(RuleResult("probe.incomplete", FAIL,
                                f"no verdict; last line seen: {next(reversed(facts), None) or rules[-1].name}"))
    elif verdict is None:
        rules.append(RuleResult("probe.incomplete", FAIL, "no probe report in the output"))
    return ProbeReport(facts=facts, rules=tuple(rules), verdict=verdict, verdict_failed=verdict_failed,
                       noise=tuple(noise))
