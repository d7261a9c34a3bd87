"""unit tier: the parts of `pvhboot compare` that need no guest — e820 sanitising (as Linux's
e820__update_table), the Linux collector's output parsed into fields, boot_params decoded field by
field, dmesg normalisation, field rules, the diff engine and the table's escaping of guest text."""
from __future__ import annotations

import ctypes
import io

from pvhboot.abi.bootparam import boot_params
from pvhboot.compare import linux, rules
from pvhboot.compare.diff import ALLOWED_ROW, EXPLAINED, FINDING, compare_records, count_findings
from pvhboot.compare.sanitize import e820_text, ram_total, sanitize_e820

PVH_E820 = [(0x0, 0x9FC00, 1), (0x9FC00, 0x40400, 2), (0xE0000, 0x10000, 3), (0xF0000, 0x10000, 2),
            (0x100000, 0x1FF00000, 1), (0xA0000, 0x60000, 2)]  # the ISA range Linux's PVH code appends
LINUX_E820 = PVH_E820[:5]


def test_sanitized_pvh_map_equals_the_linux_protocol_map():
    assert sanitize_e820(PVH_E820) == sanitize_e820(LINUX_E820)
    assert sanitize_e820(LINUX_E820) == [(0x0, 0x9FC00, 1), (0x9FC00, 0x40400, 2), (0xE0000, 0x10000, 3),
                                         (0xF0000, 0x10000, 2), (0x100000, 0x1FF00000, 1)]


def test_sanitize_overlap_takes_the_larger_type_and_merges_neighbours():
    got = sanitize_e820([(0x1000, 0x3000, 1), (0x2000, 0x1000, 5), (0x4000, 0x1000, 1), (0x9000, 0, 1)])
    assert got == [(0x1000, 0x1000, 1), (0x2000, 0x1000, 5), (0x3000, 0x2000, 1)]
    assert ram_total(got) == 0x3000
    assert e820_text(got).splitlines()[1] == "[mem 0x0000000000002000-0x0000000000002fff] unusable"


def _bp_hex(**hdr) -> str:
    bp = boot_params()
    bp.acpi_rsdp_addr = 0xE0000
    bp.e820_entries = 2
    bp.e820_table[0].addr, bp.e820_table[0].size, bp.e820_table[0].type = 0, 0x9FC00, 1
    bp.e820_table[1].addr, bp.e820_table[1].size, bp.e820_table[1].type = 0x100000, 0x7F00000, 1
    for k, v in hdr.items():
        setattr(bp.hdr, k, v)
    return bytes(bp).hex()


def test_decode_boot_params_field_by_field():
    fields = linux.decode_boot_params(bytes.fromhex(_bp_hex(type_of_loader=0xB0, version=0x20C)))
    assert fields["bp.acpi_rsdp_addr"] == "0xe0000"
    assert fields["bp.hdr.type_of_loader"] == "0xb0" and fields["bp.hdr.version"] == "0x20c"
    assert fields["bp.e820_table.1"] == "0x100000 0x7f00000 1"
    assert "bp.e820_table.2" not in fields  # only the entries e820_entries counts
    assert fields["bp.screen_info"] == "0"
    assert not [k for k in fields if "_pad" in k]
    assert linux.decode_boot_params(b"\0" * 12)["bp"].startswith("unexpected size")
    assert ctypes.sizeof(boot_params) == 4096


CONSOLE = "\r\n".join([
    "[    1.2] some kernel noise before the collector",
    "@FP-BEGIN",
    "@FP cmdline=console=ttyS0 quiet panic=-1 nokaslr pvhboot.compare=1",
    "@FP boot_params=" + _bp_hex(version=0x20F),
    "@FP-MEMMAP 0x0 0x9fbff System RAM",
    "@FP-MEMMAP 0x100000 0x7ffffff System RAM",
    "@FP-IOMEM 00000000-00000fff : Reserved",
    "@FP MemTotal=100000 kB",
    "@FP cpu.online=0-1",
    "@FP cpu0.flags=sse fpu apic la57",
    "@FP cpu1.flags=sse fpu apic la57",
    "@FP cpu0.address_sizes=40 bits physical, 48 bits virtual",
    "@FP-ACPI APIC 82",
    "@FP-ACPI DSDT 108",
    "@FP kallsyms._text=ffffffff81000000",
    "@FP tainted=0",
    "@FP-DMESG [    0.000000] Linux version 6.1.0 (debian) #1 SMP",
    "@FP-DMESG [    0.123456] tsc: Detected 2994.372 MHz processor",
    "@FP-DMESG [    0.5] WARNING: CPU: 0 PID: 1 at kernel/foo.c:12 bar+0x1c/0x30",
    "@FP-DMESG [    0.5] Call Trace:",
    "@FP-END",
])


def test_linux_fingerprint_from_the_collector_output():
    fp = linux.linux_fingerprint(CONSOLE.encode(), link_text=0xFFFFFFFF81000000)
    assert fp["collector"] == "complete"
    assert fp["cmdline"].endswith("pvhboot.compare=1")
    assert fp["bp.hdr.version"] == "0x20f"
    assert fp["memmap"] == "0x0-0x9fbff System RAM\n0x100000-0x7ffffff System RAM"
    assert fp["iomem"] == "00000000-00000fff : Reserved"
    assert fp["MemTotal"] == "100000 kB" and fp["cpu.online"] == "0-1"
    assert fp["cpu0.flags"] == "apic fpu sse"  # a set: order does not matter; la57 has its own row
    assert fp["cpu.flag.la57"] == "0 1"
    assert fp["acpi.table.APIC"] == "82"
    assert fp["kaslr.state"] == "off (nokaslr)" and fp["kaslr.offset"] == "0x0"
    assert fp["dmesg.alerts"] == ("WARNING: CPU: 0 PID: 1 at kernel/foo.c:12 bar+0x1c/0x30\nCall Trace:")
    assert fp["dmesg: tsc: Detected #.# MHz processor"] == "1"
    assert "dmesg: some kernel noise before the collector" not in fp


def test_linux_fingerprint_incomplete_and_kaslr_states():
    cut = CONSOLE.split("@FP-END")[0]
    assert linux.linux_fingerprint(cut)["collector"].startswith("incomplete")
    assert linux.linux_fingerprint("no collector here") == {}
    assert linux.kaslr_fields("ffffffff9a000000", 0xFFFFFFFF81000000, "quiet") == {
        "kaslr.state": "randomised", "kaslr.offset": "0x19000000"}
    assert linux.kaslr_fields("ffffffff81000000", 0xFFFFFFFF81000000, "quiet")["kaslr.state"] == "not randomised"
    assert linux.kaslr_fields("", 0xFFFFFFFF81000000, "")["kaslr.state"].startswith("unknown")


def test_dmesg_normalisation_masks_times_addresses_and_numbers():
    a = linux.normalise_dmesg_line("[    0.004000] ACPI: RSDP 0x00000000000E0000 000024 (v02 PVHBOT)")
    b = linux.normalise_dmesg_line("[   12.500000] ACPI: RSDP 0x00000000000F0000 000024 (v02 PVHBOT)")
    assert a == b == "ACPI: RSDP # # (v# PVHBOT)"


def test_linux_cmdline_ends_with_the_marker_cmdline_cut_drops():
    assert linux.linux_cmdline() == "console=ttyS0 quiet panic=-1 nokaslr pvhboot.compare=1"
    assert linux.linux_cmdline("foo=1", kaslr=True) == "console=ttyS0 quiet panic=-1 foo=1 pvhboot.compare=1"
    assert linux.collector_script().startswith(b"#!/bin/sh")


def test_rules_classify_and_every_allowed_difference_has_a_reason():
    assert rules.classify("bp.hdr.version", rules.LINUX_RULES).kind == rules.ALLOWED
    assert rules.classify("bp.hdr.hardware_subarch", rules.LINUX_RULES).kind == rules.MUST_EQUAL
    assert rules.classify("cpu.online", rules.LINUX_RULES) is None
    assert rules.classify("boot.cmdline", rules.PROBE_RULES) is None
    for kind in ("probe", "linux"):
        for pattern, reason in rules.allowed_differences(kind):
            assert len(reason) > 30, pattern


def _rec(path, fp, status="ok", **kw):
    return {"path": path, "cpus": 1, "memory": 64 << 20, "status": status, "fingerprint": fp, **kw}


def test_diff_engine_classes_rows():
    a = {"MemTotal": "1 kB", "bp.hdr.version": "0x20c", "kaslr.state": "off", "same": "x"}
    b = {"MemTotal": "2 kB", "bp.hdr.version": "0x20f", "kaslr.state": "off", "same": "x"}
    (g,) = compare_records([_rec("pvh", a), _rec("linux64", b)], rules.LINUX_RULES)
    kinds = {r.field: r.kind for r in g.rows}
    assert kinds == {"MemTotal": FINDING, "bp.hdr.version": ALLOWED_ROW, "kaslr.state": EXPLAINED}
    assert g.equal == 1 and count_findings([g]) == 1
    assert g.columns == ["pvh", "linux64"]


def test_diff_engine_absent_field_failed_path_and_baseline():
    recs = [_rec("pvh", {"x": "1", "only_pvh": "1"}), _rec("linux64", {"x": "1"}),
            _rec("linux32", {}, status="crash", crash_report="triple fault")]
    (g,) = compare_records(recs, rules.LINUX_RULES, baseline=[_rec("pvh", {"x": "2"}),
                                                               {**_rec("pvh", {}), "cpus": 8}])
    assert g.columns == ["pvh", "linux64", "linux32", "baseline:pvh"]
    rows = {r.field: r for r in g.rows}
    assert rows["boot status"].kind == FINDING and rows["boot status"].values["linux32"] == "crash"
    assert rows["only_pvh"].values["linux64"] is None and rows["only_pvh"].kind == FINDING
    assert rows["x"].values["baseline:pvh"] == "2"
    assert list(g.failed) == ["linux32"]


def test_table_never_interprets_guest_text_as_markup():
    from rich.console import Console

    evil = "[bold red]pwned[/] [/nope] [link=http://x]y"
    recs = [_rec("pvh", {"cmdline": evil}), _rec("linux64", {"cmdline": "plain"}),
            _rec("linux32", {}, status="crash", crash_report="[red]crash[/red] report")]
    from pvhboot.compare.report import print_report

    buf = io.StringIO()
    print_report(compare_records(recs, rules.LINUX_RULES), Console(file=buf, width=300, color_system=None))
    out = buf.getvalue()
    assert evil in out
    assert "[red]crash[/red] report" in out
    assert "1 finding" not in out and "2 findings" in out


def _la57_group(memtotals: dict[str, tuple[str, bool]]):
    recs = [{**_rec(p, {"MemTotal": f"{kib} kB", "cpu.flag.la57": "0" if la57 else "none"}), "protocol": p}
            for p, (kib, la57) in memtotals.items()]
    (g,) = compare_records(recs, rules.LINUX_RULES)
    return {r.field: r.kind for r in g.rows}


def test_memtotal_may_differ_only_by_what_5_level_paging_costs():
    # Measured with the Debian 6.1 cloud kernel, 256 MiB: decompressor paths (la57 on) 1012 kB lower.
    assert _la57_group({"pvh": (223520, False), "linux64": (222508, True), "linux32": (222508, True),
                        "linux64-vmlinux": (223520, False)})["MemTotal"] == ALLOWED_ROW
    # 32 MiB of RAM dropped on one path is a finding, whatever the paging mode
    assert _la57_group({"pvh": (223520 - 32768, False), "linux64": (222508, True),
                        "linux64-vmlinux": (223520, False)})["MemTotal"] == FINDING
    assert _la57_group({"pvh": (223520, False), "linux64": (222508 - 32768, True)})["MemTotal"] == FINDING
    # a difference with no paging-mode difference behind it
    assert _la57_group({"pvh": (223520, False), "linux64": (222508, False)})["MemTotal"] == FINDING


def test_acpi_rsdp_addr_may_be_zero_only_on_pvh():
    def kinds(values):
        recs = [{**_rec(p, {"bp.acpi_rsdp_addr": v}), "protocol": p.split("-")[0]} for p, v in values.items()]
        (g,) = compare_records(recs, rules.LINUX_RULES)
        return {r.field: r.kind for r in g.rows}.get("bp.acpi_rsdp_addr")

    assert kinds({"pvh": "0x0", "linux64": "0xe0000", "linux32": "0xe0000"}) == ALLOWED_ROW
    assert kinds({"pvh": "0x0", "linux64": "0x0", "linux32": "0xe0000"}) == FINDING
    assert kinds({"pvh": "0xe0000", "linux64": "0xf0000"}) == FINDING


def test_report_shows_what_differs_in_long_values_and_collapses_many_allowed_rows():
    from pvhboot.compare.report import collapse, shown_values

    flags = "a b c d e f g h i j"
    assert shown_values({"pvh": flags + " la57", "linux64": flags, "x": None}) == {
        "pvh": "[10 common words] la57", "linux64": "[10 common words] ", "x": None}
    mm = "0x0-0x9fbff RAM\n0x100000-0xfffffff RAM"
    cut = "0x0-0x9fbff RAM\n0x100000-0x7ffffff RAM\n0xa000000-0xfffffff RAM"
    assert shown_values({"a": mm, "b": cut})["b"] == "[1 common lines]\n0x100000-0x7ffffff RAM\n0xa000000-0xfffffff RAM"
    assert shown_values({"a": "1", "b": "2"}) == {"a": "1", "b": "2"}
    hdr = {f"bp.hdr.f{i}": "1" for i in range(6)}
    recs = [_rec("pvh", {**hdr, "MemTotal": "1 kB"}), _rec("linux64", {k: "2" for k in hdr} | {"MemTotal": "1 kB"})]
    (g,) = compare_records(recs, rules.LINUX_RULES)
    rows = collapse(g.rows)
    assert [r.field for r in rows] == ["bp.hdr.* (6 fields)"]
    assert len(g.rows) == 6 and g.to_json()["rows"][0]["rule"] == "bp.hdr.*"  # --json keeps every field
