"""The probe's report parser and `pvhboot conformance --report` on saved console logs."""
from __future__ import annotations

import json

import pytest

from pvhboot.cli import main
from pvhboot.commands.conformance import build_vmm_command
from pvhboot.errors import ConfigError
from pvhboot.probe.report import RULES, parse_report

PASSING = """\
probe.version=1
probe.protocol=pvh
rule.load.bss_zeroed=pass 64 bytes at the end of .bss read as zero
entry.cr0=0x1
rule.entry.cr0=pass cr0=0x1
rule.entry.tr_busy=pass type=0xb ltr faulted (busy)
start_info.memmap.0=0x0 0x9fc00 1
start_info.memmap.1=0x9fc00 0x40400 2
start_info.memmap.10=0x100000000 0x40000000 1
start_info.memmap.2=0x100000 0x3f00000 1
start_info.cmdline=console=ttyS0 a=b
rule.start_info.cmdline_nul=pass NUL at +17
smp.cpus_seen=2
probe.rules=4
PROBE PASS
"""


def test_passing_report():
    rep = parse_report(PASSING.encode())
    assert rep.complete and rep.passed and rep.verdict == "pass" and rep.failed == ()
    assert [r.name for r in rep.rules] == ["load.bss_zeroed", "entry.cr0", "entry.tr_busy", "start_info.cmdline_nul"]
    assert rep.rule("entry.tr_busy").seen == "type=0xb ltr faulted (busy)"
    assert rep.facts["start_info.cmdline"] == "console=ttyS0 a=b"  # '=' in a value stays in the value
    assert rep.int_fact("smp.cpus_seen") == 2 and rep.int_fact("entry.cr0") == 1
    assert rep.table("start_info.memmap") == [(0, 0x9FC00, 1), (0x9FC00, 0x40400, 2), (0x100000, 0x3F00000, 1),
                                              (0x100000000, 0x40000000, 1)]  # numeric index order


def test_failing_report_names_rules():
    text = PASSING.replace("rule.entry.cr0=pass cr0=0x1", "rule.entry.cr0=fail cr0=0x60000011").replace(
        "PROBE PASS", "PROBE FAIL: entry.cr0")
    rep = parse_report(text)
    assert rep.verdict == "fail" and not rep.passed
    assert rep.failed == ("entry.cr0",) and rep.verdict_failed == ("entry.cr0",)
    assert rep.status("entry.cr0") == "fail" and rep.rule("entry.cr0").seen == "cr0=0x60000011"


def test_noise_escapes_and_carriage_returns():
    noisy = ("\x1bc\x1b[?7lSeaBIOS (version 1.16)\r\nqemu: warning: host doesn't support feature\r\n"
             + PASSING.replace("\n", "\r\n").replace("entry.cr0=0x1", "[  0.0] entry.cr0=0x1")
             + "qemu-system-x86_64: terminating\r\n")
    rep = parse_report(noisy.encode())
    assert rep.passed and rep.int_fact("entry.cr0") == 1
    assert rep.int_fact("smp.cpus_seen") == 2
    assert not any("SeaBIOS" in k for k in rep.facts)


def test_last_run_wins():
    first = PASSING.replace("PROBE PASS", "PROBE FAIL: entry.cr0")
    rep = parse_report(first + "reset\n" + PASSING)
    assert rep.passed


def test_incomplete_report_fails_with_last_fact():
    rep = parse_report(PASSING.split("smp.cpus_seen")[0])
    assert not rep.complete and not rep.passed
    assert rep.failed == ("probe.incomplete",)
    assert "start_info.cmdline" in rep.rule("probe.incomplete").seen


def test_no_report_at_all():
    rep = parse_report(b"qemu: could not load kernel\n")
    assert not rep.passed and rep.failed == ("probe.incomplete",)
    assert "no probe report" in rep.rule("probe.incomplete").seen


def test_unverifiable_is_not_failure():
    rep = parse_report(PASSING.replace("rule.entry.tr_busy=pass type=0xb ltr faulted (busy)",
                                       "rule.entry.tr_busy=unverifiable selector 0x0 not readable"))
    assert rep.passed and rep.status("entry.tr_busy") == "unverifiable"


def test_every_rule_the_probe_can_emit_is_described():
    """Rule names in the probe's C source are all in RULES (the conformance table describes them)."""
    import re

    from pvhboot.probe import source_dir

    src = (source_dir() / "probe.c").read_text()
    names = set(re.findall(r'(?:rule|check_segment|check_aligned)\("([a-z0-9_.]+)"', src))
    assert len(names) > 50
    assert names - set(RULES) == set()


def test_every_described_rule_is_emitted_by_the_probe():
    """No stale description: each RULES name but probe.incomplete (the parser's own) is in probe.c."""
    import re

    from pvhboot.probe import source_dir

    src = (source_dir() / "probe.c").read_text()
    emitted = set(re.findall(r'(?:rule|check_segment|check_aligned)\("([a-z0-9_.]+)"', src))
    assert set(RULES) - emitted == {"probe.incomplete"}


# What QEMU 7.2 microvm (qboot) with -initrd reports (tests/differential/test_probe_qemu.py runs it).
QBOOT_INITRD = """\
probe.version=1
probe.protocol=pvh
entry.esp=0x7b60
entry.tr=0x0
rule.entry.tr_busy=unverifiable tr=0x0 is the null selector: no TSS descriptor to read, the hidden TR state is \
invisible to the guest
rule.entry.ebx=pass ebx=0xf31e0 magic=0x336ec578
rule.start_info.aligned=pass start_info 0xf31e0 is 8-byte aligned
start_info.modlist_paddr=0x7b7c
start_info.memmap.4=0x100000 0x3f00000 1
start_info.memmap.5=0x0 0x0 0
rule.start_info.memmap_sorted=pass ascending addresses
rule.start_info.memmap_types=pass types 1..7
rule.start_info.memmap_no_empty=fail 1 empty, first: entry 5 (addr 0x0 size 0 type 0)
rule.start_info.memmap_aligned=pass memmap 0xefbe0 is 8-byte aligned
rule.start_info.modlist_in_ram=pass modlist 0x7b7c, 1 entries
rule.start_info.modlist_aligned=fail modlist 0x7b7c is 4 bytes past an 8-byte boundary
rule.start_info.not_on_entry_stack=fail modlist 0x7b7c+0x20 at esp+0x1c, on the loader's stack (entry esp 0x7b60, \
window 0x6b60-0x8b60)
probe.rules=12
PROBE FAIL: start_info.memmap_no_empty; start_info.modlist_aligned; start_info.not_on_entry_stack
"""


def test_qboot_report_names_each_defect_once():
    rep = parse_report(QBOOT_INITRD)
    assert rep.verdict == "fail"
    assert rep.failed == ("start_info.memmap_no_empty", "start_info.modlist_aligned", "start_info.not_on_entry_stack")
    assert rep.status("start_info.memmap_sorted") == "pass"  # the empty entry is not an ordering defect
    assert rep.rule("start_info.not_on_entry_stack").seen == \
        "modlist 0x7b7c+0x20 at esp+0x1c, on the loader's stack (entry esp 0x7b60, window 0x6b60-0x8b60)"
    assert rep.int_fact("entry.esp") == 0x7B7C - 0x1C == rep.int_fact("start_info.modlist_paddr") - 0x1C
    assert rep.status("entry.tr_busy") == "unverifiable" and "null selector" in rep.rule("entry.tr_busy").seen
    # the new rules cite where they come from
    for name in ("start_info.aligned", "start_info.memmap_aligned", "start_info.modlist_aligned",
                 "start_info.memmap_no_empty"):
        assert rep.rule(name).source == "xen/include/public/arch-x86/hvm/start_info.h", name
    assert "4 KiB" in rep.rule("start_info.not_on_entry_stack").description
    assert rep.table("start_info.memmap") == [(0x100000, 0x3F00000, 1), (0, 0, 0)]


def test_conformance_cli_on_saved_logs(tmp_path, capsys):
    good, bad = tmp_path / "good.log", tmp_path / "bad.log"
    good.write_text(PASSING)
    bad.write_text(PASSING.split("smp.cpus_seen")[0])
    assert main(["conformance", "--report", str(good)]) == 0
    out = capsys.readouterr().out
    assert "PROBE PASS" in out and "entry.tr_busy" in out
    assert main(["conformance", "--json", "--report", str(bad)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "fail" and doc["failed"] == ["probe.incomplete"] and not doc["complete"]
    assert {"name": "entry.cr0", "status": "pass", "seen": "cr0=0x1", "source": RULES["entry.cr0"][0],
            "rule": RULES["entry.cr0"][1]} in doc["rules"]


def test_conformance_user_errors(tmp_path, capsys):
    assert main(["conformance", "--report", str(tmp_path / "missing.log")]) == 2
    assert "cannot read --report" in capsys.readouterr().err
    assert main(["conformance", "--", "qemu-system-x86_64", "-kernel", "x"]) == 2
    assert "{probe}" in capsys.readouterr().err
    assert main(["conformance", "--", "/nonexistent/vmm", "{probe}"]) == 2
    assert "not found" in capsys.readouterr().err


def test_vmm_command_substitution():
    assert build_vmm_command(["--", "qemu", "-kernel", "{probe}", "-append", "x"], "/p.elf") == \
        ["qemu", "-kernel", "/p.elf", "-append", "x"]
    assert build_vmm_command(["vmm", "--kernel={probe}"], "/p") == ["vmm", "--kernel=/p"]
    with pytest.raises(ConfigError, match="empty"):
        build_vmm_command(["--"], "/p")
