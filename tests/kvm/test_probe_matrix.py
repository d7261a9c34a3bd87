"""kvm tier: the probe passes under pvhboot across protocols, vCPUs, memory sizes, initrd and the
longest command line; and a builder that breaks one ABI rule makes the probe FAIL naming that rule.

Each run is one probe boot (~0.3 s here).  The facts the probe reports are compared with what
pvhboot placed (plan) and with pvhboot's own ``start_info_to_boot_params()``.
"""
from __future__ import annotations

import dataclasses

import pytest

from pvhboot.boot import Blob
from pvhboot.probe import probe_path
from pvhboot.probe.report import parse_report
from pvhboot.vmm import MicroVM

pytestmark = pytest.mark.kvm

MIB, GIB = 1 << 20, 1 << 30
MAX_CMDLINE = 2047  # COMMAND_LINE_SIZE - 1: what pvhboot allows for an ELF kernel without a setup header


def fnv1a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def max_cmdline() -> str:
    words = "console=ttyS0 probe.test=matrix "
    return (words * (MAX_CMDLINE // len(words) + 1))[:MAX_CMDLINE]


@pytest.fixture(scope="module")
def initrd(tmp_path_factory):
    path = tmp_path_factory.mktemp("probe") / "initrd.bin"
    path.write_bytes(bytes((i * 7 + 3) & 0xFF for i in range(12345)))
    return path


def boot(**kw):
    """Run the probe; return (exit record, parsed report, start_info bytes and a memory reader)."""
    extra = {}
    kw.setdefault("console", None)
    kw.setdefault("timeout", 60)
    with MicroVM(str(probe_path()), **kw) as vm:
        record = vm.run()
        plan = vm.loaded.plan
        if kw.get("protocol") == "pvh":
            from pvhboot.boot.convert import start_info_to_boot_params

            si = plan.find(Blob.START_INFO)
            extra["expected_bp"] = start_info_to_boot_params(vm.mem.read(si.addr, 56), vm.mem.read)
        extra["plan"] = plan
    return record, parse_report(record.console), extra


VARIANTS = [  # (cpus, with initrd, long cmdline)
    pytest.param(1, False, True, id="1cpu-noinitrd-maxcmdline"),
    pytest.param(2, True, False, id="2cpu-initrd"),
]


@pytest.mark.parametrize("memory", [16 * MIB, 512 * MIB, 6 * GIB], ids=["16M", "512M", "6G"])
@pytest.mark.parametrize("cpus,with_initrd,long_cmdline", VARIANTS)
@pytest.mark.parametrize("protocol", ["pvh", "linux64"])
def test_probe_passes(protocol, cpus, with_initrd, long_cmdline, memory, initrd):
    cmdline = max_cmdline() if long_cmdline else "console=ttyS0 probe"
    record, rep, extra = boot(protocol=protocol, cpus=cpus, memory=memory, cmdline=cmdline,
                              initrd=str(initrd) if with_initrd else None)
    assert rep.complete, rep.rules[-1]
    assert rep.passed, f"failed: {rep.failed}\n" + record.console.decode(errors="replace")[-3000:]
    assert record.reason == "debug_exit" and record.exit_code == 0
    assert rep.facts["probe.protocol"] == protocol
    assert rep.int_fact("smp.cpus_seen") == cpus
    assert rep.status("smp.aps_started") == "pass"
    assert not [r for r in rep.rules if r.status == "unverifiable"], "under pvhboot every rule is checkable"

    prefix = "start_info" if protocol == "pvh" else "boot_params"
    assert rep.int_fact(f"{prefix}.cmdline_len") == len(cmdline)
    assert rep.int_fact(f"{prefix}.cmdline_fnv1a") == fnv1a(cmdline.encode())

    memmap = rep.table("start_info.memmap" if protocol == "pvh" else "boot_params.e820")
    ram = sum(size for _, size, typ in memmap if typ == 1)
    assert memory - 2 * MIB < ram <= memory, memmap  # the ISA hole and the EBDA are not RAM
    above_4g = [e for e in memmap if e[0] >= 4 * GIB]
    assert bool(above_4g) == (memory > 3 * GIB), memmap

    data = initrd.read_bytes()
    if protocol == "pvh":
        assert rep.int_fact("start_info.nr_modules") == (1 if with_initrd else 0)
        if with_initrd:
            paddr, size, _ = (int(v, 0) for v in rep.facts["start_info.mod.0"].split())
            assert size == len(data) and paddr == extra["plan"].find(Blob.INITRD).addr
            assert rep.facts["start_info.mod.0.head"] == data[:16].hex()
        # The probe's conversion (as Linux does it in the guest) equals pvhboot's prediction.
        bp = extra["expected_bp"]
        want = [(bp.e820_table[i].addr, bp.e820_table[i].size, bp.e820_table[i].type)
                for i in range(bp.e820_entries)]
        assert rep.table("pvh_bootparams.e820") == want
        assert want[-1] == (0xA0000, 0x60000, 2)
        assert rep.int_fact("pvh_bootparams.version") == bp.hdr.version == 0x020C
        assert rep.int_fact("pvh_bootparams.type_of_loader") == bp.hdr.type_of_loader == 0xB0
        assert rep.int_fact("pvh_bootparams.hardware_subarch") == 0
        assert rep.int_fact("pvh_bootparams.cmd_line_ptr") == bp.hdr.cmd_line_ptr
        assert rep.int_fact("pvh_bootparams.ramdisk_size") == bp.hdr.ramdisk_size == (len(data) if with_initrd else 0)
    else:
        assert rep.int_fact("boot_params.ramdisk_size") == (len(data) if with_initrd else 0)
        if with_initrd:
            assert rep.int_fact("boot_params.ramdisk_image") == extra["plan"].find(Blob.INITRD).addr
            assert rep.facts["boot_params.ramdisk.head"] == data[:16].hex()


# --- mutations: each breaks one rule after load_guest, before the first instruction ------------------

def tr_not_busy(loaded, mem):
    """TR an available (not busy) 32-bit TSS: in the hidden state and in the GDT the probe can read."""
    cpu = loaded.cpu
    assert cpu.tr.type == 0xB
    desc_at = cpu.gdt.base + (cpu.tr.selector & ~7)
    byte5 = mem.read(desc_at + 5, 1)[0]
    assert byte5 & 0xF == 0xB, "pvhboot's GDT holds the busy TSS descriptor at TR's selector"
    mem.write(desc_at + 5, bytes([byte5 & ~0x2]))  # type 0xb -> 0x9
    return dataclasses.replace(loaded, cpu=dataclasses.replace(cpu, tr=dataclasses.replace(cpu.tr, type=0x9)))


def ebx_off_by_8(loaded, mem):
    gprs = dict(loaded.cpu.gprs)
    gprs["rbx"] += 8
    return dataclasses.replace(loaded, cpu=dataclasses.replace(loaded.cpu, gprs=gprs))


def unsorted_memmap(loaded, mem):
    mm = loaded.plan.find(Blob.MEMMAP).addr
    first, second = mem.read(mm, 24), mem.read(mm + 24, 24)
    mem.write(mm, second + first)
    return loaded


def bad_rsdp_checksum(loaded, mem):
    rsdp = loaded.plan.find(Blob.ACPI_RSDP).addr
    assert mem.read(rsdp, 8) == b"RSD PTR "
    mem.write(rsdp + 8, bytes([(mem.read(rsdp + 8, 1)[0] + 1) & 0xFF]))
    return loaded


def cmdline_without_nul(loaded, mem):
    """The command line's NUL and the 2 KiB after it overwritten (nothing else lives there)."""
    at = loaded.plan.find(Blob.CMDLINE).addr
    assert mem.read(at, 6) == b"probe\0"
    others = [p for p in loaded.plan.placements if p.blob is not Blob.CMDLINE]
    assert not [p for p in others if p.addr < at + 4096 and at < p.addr + p.size]
    mem.write(at, b"probe" + b"A" * 4091)
    return loaded


MUTATIONS = [
    pytest.param(tr_not_busy, "entry.tr_busy", id="tr-not-busy"),
    pytest.param(ebx_off_by_8, "entry.ebx", id="ebx-off-by-8"),
    pytest.param(unsorted_memmap, "start_info.memmap_sorted", id="unsorted-memmap"),
    pytest.param(bad_rsdp_checksum, "acpi.rsdp_checksum", id="bad-rsdp-checksum"),
    pytest.param(cmdline_without_nul, "start_info.cmdline_nul", id="cmdline-without-nul"),
]


@pytest.mark.parametrize("mutate,rule", MUTATIONS)
def test_mutation_fails_naming_the_rule(mutate, rule):
    record, rep, _ = boot(protocol="pvh", cpus=1, memory=64 * MIB, cmdline="probe", mutate=mutate)
    assert rep.complete and rep.verdict == "fail"
    assert rule in rep.verdict_failed, rep.verdict_failed
    assert rep.status(rule) == "fail"
    assert record.exit_code == 1
    # and nothing unrelated broke: the failures are the named rule and its direct consequences
    allowed = {rule, "acpi.rsdp_ext_checksum"}  # the extended checksum covers the first one's byte
    assert set(rep.failed) <= allowed, rep.failed


def test_unmutated_control_passes():
    """The control for the mutations above: same configuration, no mutation."""
    record, rep, _ = boot(protocol="pvh", cpus=1, memory=64 * MIB, cmdline="probe")
    assert rep.passed and record.exit_code == 0
    assert rep.status("entry.tr_busy") == "pass" and "ltr faulted" in rep.rule("entry.tr_busy").seen
