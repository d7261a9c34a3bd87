"""Moving the kernel: --load-addr / --kaslr against the PHYS32_RELOC note (PVH) and the setup header
(Linux protocols); load_guest writes the moved kernel and starts it at the moved entry."""
import json

import pytest
from boot_synth import bzimage_kernel, elf_kernel

from pvhboot.boot import Blob, BootConfig, Protocol, load_guest, plan_guest
from pvhboot.errors import BootError, ConfigError, LayoutError
from pvhboot.memory import GuestMemory

MiB = 1 << 20
RELOC = (0x200000, 0x1000000, 0x3FFFFFFF)


def reloc_kernel(**kw):
    return elf_kernel(segments=((0x1000000, 0x3000, 0x5000), (0x1200000, 0x800, 0x800)), pvh_entry=0x1000040,
                      reloc=RELOC, **kw)


def test_load_addr_moves_every_segment_and_the_entry():
    plan = plan_guest(reloc_kernel(), BootConfig(memory=256 * MiB, load_addr=0x4000000))
    assert [(p.addr, p.size) for p in plan.placements if p.blob is Blob.KERNEL] == \
        [(0x4000000, 0x5000), (0x4200000, 0x800)]
    assert plan.entry == 0x4000040
    w = plan.kernel_placement
    assert (w.load_addr, w.link_addr, w.offset, w.kaslr_seed) == (0x4000000, 0x1000000, 0x3000000, None)
    assert w.window.to_json() == {"align": 0x200000, "min": 0x1000000, "max": 0x3FFFFFFF}


@pytest.mark.parametrize("addr,why", [(0x4100000, "misaligned"), (0xE00000, "below min"),
                                      (0x3FE00000, "last byte past max")])
def test_load_addr_outside_the_note_is_refused(addr, why):
    with pytest.raises(LayoutError) as e:
        plan_guest(reloc_kernel(), BootConfig(memory=2048 * MiB, load_addr=addr))
    assert str(e.value) == (
        f"load address {addr:#x} is not allowed for synthetic-vmlinux: it must be 2 MiB-aligned, at or "
        "above 0x1000000, with the kernel's last byte (+0x200800) at or below 0x3fffffff")


def test_pvh_kernel_without_the_note_is_refused_naming_it():
    with pytest.raises(BootError) as e:
        plan_guest(elf_kernel(), BootConfig(load_addr=0x400000))
    assert str(e.value) == ("synthetic-vmlinux: cannot be moved for a PVH boot: it has no "
                            "XEN_ELFNOTE_PHYS32_RELOC note (its PVH entry is not position-independent)")


def test_without_options_the_kernel_stays_at_its_link_address():
    plan = plan_guest(reloc_kernel(), BootConfig(memory=64 * MiB))
    assert plan.kernel_placement.offset == 0 and plan.entry == 0x1000040


def test_kaslr_is_a_function_of_the_seed():
    k = reloc_kernel()
    picks = {plan_guest(k, BootConfig(memory=1024 * MiB, kaslr_seed=s)).kernel_placement.load_addr
             for s in range(20)}
    assert len(picks) > 5 and all(a % 0x200000 == 0 and a >= 0x1000000 for a in picks)
    a = plan_guest(k, BootConfig(memory=1024 * MiB, kaslr_seed=7))
    b = plan_guest(k, BootConfig(memory=1024 * MiB, kaslr_seed=7))
    assert a.kernel_placement == b.kernel_placement and a.placements == b.placements


def test_kaslr_leaves_room_for_the_initrd():
    # 64 MiB of RAM, a 30 MiB initrd: only slots that leave it a place are drawn.
    for seed in range(30):
        plan = plan_guest(reloc_kernel(), BootConfig(memory=64 * MiB, kaslr_seed=seed), initrd_size=30 * MiB)
        i, k = plan.find(Blob.INITRD), plan.find(Blob.KERNEL)
        assert i.addr + i.size <= k.addr or k.addr + 0x200800 <= i.addr


def test_load_addr_and_kaslr_exclude_each_other():
    with pytest.raises(ConfigError, match="exclude each other"):
        plan_guest(reloc_kernel(), BootConfig(load_addr=0x4000000, kaslr_seed=1))


def test_linux64_bzimage_moves_per_its_setup_header():
    plan = plan_guest(bzimage_kernel(), BootConfig(protocol="linux64", load_addr=0x2000000, memory=256 * MiB))
    assert plan.find(Blob.KERNEL).addr == 0x2000000 and plan.entry == 0x2000200
    assert plan.setup_header.code32_start == 0x2000000
    with pytest.raises(LayoutError, match="must be 2 MiB-aligned"):
        plan_guest(bzimage_kernel(), BootConfig(protocol="linux64", load_addr=0x2100000))
    with pytest.raises(BootError, match="does not set relocatable_kernel"):
        plan_guest(bzimage_kernel(relocatable=0), BootConfig(protocol="linux64", load_addr=0x2000000))
    with pytest.raises(BootError, match="an ELF vmlinux has no setup header"):
        plan_guest(elf_kernel(), BootConfig(protocol="linux64", load_addr=0x2000000))


def test_load_guest_writes_the_moved_kernel(tmp_path):
    k = reloc_kernel()
    plan = plan_guest(k, BootConfig(memory=128 * MiB, load_addr=0x6000000))
    with GuestMemory(list(plan.ram_ranges)) as mem:
        g = load_guest(plan, mem)
        assert mem.read(0x6000000, 0x3000) == b"\x01" * 0x3000 and mem.read(0x6200000, 0x800) == b"\x02" * 0x800
        assert mem.read(0x1000000, 16) == bytes(16)  # nothing at the link address
        assert g.cpu.rip == 0x6000040 and g.cpu.protocol is Protocol.PVH


def test_plan_command_json_shows_window_and_seed(capsys, monkeypatch):
    from pvhboot import cli
    from pvhboot.commands import plan as plan_cmd

    monkeypatch.setattr(plan_cmd, "load_kernel", lambda path: reloc_kernel(path=path))
    assert cli.main(["plan", "k", "--memory", "1G", "--kaslr=99", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    where = report["kernel_placement"]
    assert where["kaslr_seed"] == 99 and where["phys32_reloc"] == {"align": 0x200000, "min": 0x1000000,
                                                                   "max": 0x3FFFFFFF}
    assert report["entry"] == where["load_addr"] + 0x40 and where["offset"] == where["load_addr"] - 0x1000000
    assert cli.main(["plan", "k", "--load-addr", "0x4100000"]) == 2
    assert "must be 2 MiB-aligned" in capsys.readouterr().err
    assert cli.main(["plan", "k", "--load-addr", "banana"]) == 2
    assert capsys.readouterr().err.strip() == "pvhboot: error: invalid --load-addr 'banana' (a number, e.g. 0x4000000)"


def test_protocol_choices_come_from_the_enum():
    from pvhboot.cli import build_parser

    parser = build_parser()
    for name in ("boot", "plan", "run"):
        sub = parser._subparsers._group_actions[0].choices[name]
        action = next(a for a in sub._actions if a.dest == "protocol")
        assert tuple(action.choices) == ("auto", "pvh", "linux32", "linux64") == Protocol.choices()


def test_the_runtime_boots_only_what_it_is_given():
    """Choosing the probe when no kernel is named is the commands' job (commands/_util.builtin_probe)."""
    from pvhboot.commands._util import builtin_probe
    from pvhboot.probe import probe_path
    from pvhboot.vmm import MicroVM

    with pytest.raises(ConfigError, match="no kernel given"):
        MicroVM(memory=64 * MiB)
    assert builtin_probe() == str(probe_path())
