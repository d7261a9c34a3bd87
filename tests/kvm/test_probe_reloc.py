"""kvm tier: the probe's PVH entry is position-independent (its XEN_ELFNOTE_PHYS32_RELOC note says
so) and pvhboot places it anywhere the note allows: at several load addresses, with 1 and 2 vCPUs,
every rule passes, and the probe reports (from inside) running where the plan put it, aligned as its
note asks (rule image.placement)."""
from __future__ import annotations

import pytest

from pvhboot.boot import Blob
from pvhboot.probe import probe_path
from pvhboot.probe.report import parse_report
from pvhboot.vmm import MicroVM

pytestmark = pytest.mark.kvm

MIB = 1 << 20
LINK = 0x100000  # the probe's link address (probe.ld)


def boot(cpus: int, **placement):
    with MicroVM(str(probe_path()), memory=1088 * MIB, cpus=cpus, console=None, timeout=60,
                 protocol="pvh", cmdline="console=ttyS0 probe", **placement) as vm:
        record = vm.run()
        plan = vm.loaded.plan
    return record, parse_report(record.console), plan


# 1 MiB (its own address), just above it, high in RAM, and the top of the note's window
# (0x3fffffff) minus the image's size rounded to the note's 1 MiB alignment.
@pytest.mark.parametrize("load_addr", [LINK, 0x200000, 0x300000, 0x7300000, 0x3FF00000])
@pytest.mark.parametrize("cpus", [1, 2])
def test_probe_runs_where_it_was_placed(load_addr, cpus):
    record, rep, plan = boot(cpus, load_addr=load_addr)
    assert rep.passed, f"failed: {rep.failed}\n" + record.console.decode(errors="replace")[-2000:]
    assert record.reason == "debug_exit" and record.exit_code == 0
    assert plan.find(Blob.KERNEL).addr == load_addr
    assert plan.entry == load_addr + (plan.kernel.entries.pvh - LINK)
    assert rep.int_fact("image.load_addr") == load_addr
    assert rep.status("image.placement") == "pass" and rep.status("entry.cs_base") == "pass"
    assert rep.int_fact("smp.cpus_seen") == cpus and rep.status("smp.aps_started") == "pass"


def test_kaslr_seed_replays_the_same_address():
    _, rep1, plan1 = boot(2, kaslr_seed=1234)
    _, rep2, plan2 = boot(1, kaslr_seed=1234)
    addr = plan1.kernel_placement.load_addr
    assert addr == plan2.kernel_placement.load_addr and addr % MIB == 0
    assert plan1.kernel_placement.kaslr_seed == 1234
    assert rep1.passed and rep2.passed
    assert rep1.int_fact("image.load_addr") == rep2.int_fact("image.load_addr") == addr


def test_a_mis_placed_probe_fails_naming_the_rule():
    """The plan refuses a load address off the note's alignment; force one past it (the kernel
    copied 4 KiB higher and the entry moved with it): the probe runs and fails image.placement."""
    import dataclasses

    def shift(loaded, mem):
        seg = loaded.plan.find(Blob.KERNEL)
        mem.write(seg.addr + 0x1000, mem.read(seg.addr, seg.size))
        return dataclasses.replace(loaded, cpu=dataclasses.replace(loaded.cpu, rip=loaded.cpu.rip + 0x1000))

    with MicroVM(str(probe_path()), memory=256 * MIB, console=None, timeout=60, protocol="pvh",
                 load_addr=0x4000000, mutate=shift) as vm:
        record = vm.run()
    rep = parse_report(record.console)
    assert rep.complete and rep.verdict == "fail"
    assert rep.status("image.placement") == "fail" and rep.int_fact("image.load_addr") == 0x4001000
    assert set(rep.failed) == {"image.placement"}, rep.failed
