"""kvm tier: the probe passes under pvhboot across protocols, vCPUs, memory sizes, initrd and the
longest command line; and a builder that breaks one ABI rule makes the probe FAIL naming that rule.

Each run is one probe boot (~0.3 s here).  The facts the probe reports are compared with what
pvhboot placed (plan) and with pvhboot's own ``start_info_to_boot_params()``.
"""
from __future__ import annotations

import ctypes
import dataclasses

import pytest
from support import probe_elf

from pvhboot.abi.start_info import hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info
from pvhboot.boot import Blob
from pvhboot.memory import layout
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
    with MicroVM(probe_elf(), **kw) as vm:
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
        # the alignment, empty-entry and entry-stack rules are checked (and pass) under pvhboot
        assert rep.int_fact("entry.esp") == layout.BOOT_STACK_POINTER
        new_rules = ["start_info.aligned", "start_info.memmap_aligned", "start_info.memmap_no_empty",
                     "start_info.not_on_entry_stack"] + (["start_info.modlist_aligned"] if with_initrd else [])
        for name in new_rules:
            assert rep.status(name) == "pass", (name, rep.rule(name))
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


def _start_info_field(loaded, mem, name, value=None):
    """Read (and with ``value`` rewrite) one hvm_start_info field in guest memory."""
    field = getattr(hvm_start_info, name)
    at = loaded.plan.find(Blob.START_INFO).addr + field.offset
    if value is not None:
        mem.write(at, value.to_bytes(field.size, "little"))
    return int.from_bytes(mem.read(at, field.size), "little")


def _move_modlist(loaded, mem, to):
    """Copy the modlist to ``to`` (where nothing pvhboot placed lies) and point start_info at it."""
    ml = loaded.plan.find(Blob.MODLIST)
    assert not [p for p in loaded.plan.placements if p.addr < to + ml.size and to < p.addr + p.size
                and p.blob not in (Blob.BOOT_STACK, Blob.MODLIST)]
    mem.write(to, mem.read(ml.addr, ctypes.sizeof(hvm_modlist_entry)))
    mem.write(ml.addr, bytes(ctypes.sizeof(hvm_modlist_entry)))  # the old copy is not the modlist any more
    _start_info_field(loaded, mem, "modlist_paddr", to)
    return loaded


def modlist_misaligned(loaded, mem):
    """The modlist 4 bytes past an 8-byte boundary (in pvhboot's start_info area, off any stack)."""
    return _move_modlist(loaded, mem, loaded.plan.find(Blob.MODLIST).addr + 4)


def modlist_on_entry_stack(loaded, mem):
    """The modlist 8-byte aligned but inside the boot stack page, 0x40 below the entry ESP."""
    return _move_modlist(loaded, mem, loaded.cpu.rsp - 0x40)


def modlist_as_qboot(loaded, mem):
    """What QEMU 7.2 microvm does: the modlist 0x1c above the entry ESP (misaligned, on the stack)."""
    return _move_modlist(loaded, mem, loaded.cpu.rsp + 0x1C)


def _append_empty_memmap_entry(loaded, mem):
    entry = ctypes.sizeof(hvm_memmap_table_entry)
    mm, n = loaded.plan.find(Blob.MEMMAP).addr, _start_info_field(loaded, mem, "memmap_entries")
    mem.write(mm + entry * n, bytes(entry))
    _start_info_field(loaded, mem, "memmap_entries", n + 1)
    return loaded


def memmap_empty_entry(loaded, mem):
    """qboot's memmap: an empty entry (addr 0, size 0, type 0) counted at the end."""
    return _append_empty_memmap_entry(loaded, mem)


def memmap_unsorted_and_empty(loaded, mem):
    """Two defects at once: two entries swapped and an empty entry at the end."""
    return _append_empty_memmap_entry(unsorted_memmap(loaded, mem), mem)


ESP = layout.BOOT_STACK_POINTER  # pvhboot's entry ESP (the probe's stack window is ESP +- 4 KiB)
MUTATIONS = [  # (mutation, the rules it must fail, with exactly these "seen" texts when given)
    pytest.param(tr_not_busy, {"entry.tr_busy": None}, id="tr-not-busy"),
    pytest.param(ebx_off_by_8, {"entry.ebx": None}, id="ebx-off-by-8"),
    pytest.param(unsorted_memmap, {"start_info.memmap_sorted": None}, id="unsorted-memmap"),
    pytest.param(bad_rsdp_checksum, {"acpi.rsdp_checksum": None}, id="bad-rsdp-checksum"),
    pytest.param(cmdline_without_nul, {"start_info.cmdline_nul": None}, id="cmdline-without-nul"),
    pytest.param(modlist_misaligned, {"start_info.modlist_aligned":
                                      f"modlist {layout.MODLIST_START + 4:#x} is 4 bytes past an 8-byte boundary"},
                 id="modlist-misaligned"),
    pytest.param(modlist_on_entry_stack, {"start_info.not_on_entry_stack":
                                          f"modlist {ESP - 0x40:#x}+0x20 at esp-0x40, on the loader's stack "
                                          f"(entry esp {ESP:#x}, window {ESP - 0x1000:#x}-{ESP + 0x1000:#x})"},
                 id="modlist-on-entry-stack"),
    pytest.param(modlist_as_qboot, {"start_info.modlist_aligned": None, "start_info.not_on_entry_stack": None},
                 id="modlist-as-qboot"),
    pytest.param(memmap_empty_entry, {"start_info.memmap_no_empty": None}, id="memmap-empty-entry"),
    pytest.param(memmap_unsorted_and_empty, {"start_info.memmap_sorted": None, "start_info.memmap_no_empty": None},
                 id="memmap-unsorted-and-empty"),
]


@pytest.mark.parametrize("mutate,rules", MUTATIONS)
def test_mutation_fails_naming_the_rule(mutate, rules, initrd):
    record, rep, _ = boot(protocol="pvh", cpus=1, memory=64 * MIB, cmdline="probe", initrd=str(initrd),
                          mutate=mutate)
    assert rep.complete and rep.verdict == "fail"
    for rule, seen in rules.items():
        assert rule in rep.verdict_failed, rep.verdict_failed
        assert rep.status(rule) == "fail"
        if seen is not None:
            assert rep.rule(rule).seen == seen
    assert record.exit_code == 1
    # and nothing unrelated broke: the failures are the named rules and their direct consequences
    allowed = set(rules) | {"acpi.rsdp_ext_checksum"}  # the extended checksum covers the first one's byte
    assert set(rep.failed) <= allowed, rep.failed
    # two defects, two texts: neither rule reports the other's defect
    seen = {rep.rule(r).seen for r in rules}
    assert len(seen) == len(rules), seen


def test_unsorted_and_empty_memmap_texts():
    """Each defect is described by its own rule: the swap by the order, the empty entry by its index."""
    record, rep, _ = boot(protocol="pvh", cpus=1, memory=64 * MIB, cmdline="probe", mutate=memmap_unsorted_and_empty)
    memmap = rep.table("start_info.memmap")
    assert memmap[-1] == (0, 0, 0)
    assert rep.rule("start_info.memmap_sorted").seen == f"entry 1 ({memmap[1][0]:#x}) below entry 0 ({memmap[0][0]:#x})"
    assert rep.rule("start_info.memmap_no_empty").seen == \
        f"1 empty, first: entry {len(memmap) - 1} (addr 0x0 size 0 type 0)"
    assert rep.status("start_info.memmap_types") == "pass"


def tr_null_selector(loaded, mem):
    """TR's selector 0 with the hidden busy-TSS state kept: what Xen loads (no selector in vcpu_hvm_x86_32)."""
    cpu = loaded.cpu
    return dataclasses.replace(loaded, cpu=dataclasses.replace(cpu, tr=dataclasses.replace(cpu.tr, selector=0)))


def esp_zero(loaded, mem):
    """ESP 0: no stack handed over (pvh.pandoc leaves ESP undefined; Xen sets none)."""
    return dataclasses.replace(loaded, cpu=dataclasses.replace(loaded.cpu, rsp=0))


def test_null_tr_selector_is_reported_as_such():
    record, rep, _ = boot(protocol="pvh", cpus=1, memory=64 * MIB, cmdline="probe", mutate=tr_null_selector)
    assert rep.int_fact("entry.tr") == 0
    for name in ("entry.tr_busy", "entry.tr_tss32", "entry.tr_base", "entry.tr_limit"):
        assert rep.status(name) == "unverifiable"
        assert rep.rule(name).seen.startswith("tr=0x0 is the null selector"), rep.rule(name).seen
    assert rep.passed and record.exit_code == 0  # unverifiable is not a failure


def test_esp_zero_hands_over_no_stack(initrd):
    record, rep, _ = boot(protocol="pvh", cpus=1, memory=64 * MIB, cmdline="probe", initrd=str(initrd),
                          mutate=esp_zero)
    assert rep.int_fact("entry.esp") == 0
    assert rep.status("start_info.not_on_entry_stack") == "pass"
    assert rep.rule("start_info.not_on_entry_stack").seen.startswith("esp=0: no stack handed over")
    assert rep.passed and record.exit_code == 0


def test_unmutated_control_passes(initrd):
    """The control for the mutations above: same configuration, no mutation."""
    record, rep, _ = boot(protocol="pvh", cpus=1, memory=64 * MIB, cmdline="probe", initrd=str(initrd))
    assert rep.passed and record.exit_code == 0
    assert rep.status("entry.tr_busy") == "pass" and "ltr faulted" in rep.rule("entry.tr_busy").seen
    assert rep.status("start_info.modlist_aligned") == "pass"
    assert rep.status("start_info.not_on_entry_stack") == "pass"
