"""Property: memory plans never overlap and stay inside RAM for any memory size 16 MiB..64 GiB and
any initrd that fits; an initrd too large is a LayoutError.  Plans only: no GuestMemory here."""
from boot_synth import bzimage_kernel, elf_kernel
from hypothesis import given, settings
from hypothesis import strategies as st

from pvhboot.abi.e820 import E820Type
from pvhboot.boot import BootConfig, plan_guest
from pvhboot.errors import LayoutError
from pvhboot.memory import layout as L

MiB, GiB = 1 << 20, 1 << 30
PAGE = 4096

memory_sizes = st.integers(16 * MiB // PAGE, 64 * GiB // PAGE).map(lambda n: n * PAGE)
protocols = st.sampled_from(["pvh", "linux32", "linux64"])
# Kernels that fit in 16 MiB, as the probe does (the property is about the planner, not a kernel).
KERNELS = {
    "pvh": elf_kernel(segments=((0x100000, 0x2000, 0x300000), (0x600000, 0x1000, 0x1000))),
    "linux64": elf_kernel(segments=((0x200000, 0x2000, 0x300000),), e_entry=0x200000),
    "linux32": bzimage_kernel(init_size=0x400000, pref_address=0x400000),
}


def _room(memory, protocol):
    """Bytes between the kernel's end and the initrd limit (independent of plan.py's arithmetic)."""
    kernel_end = {"pvh": 0x601000, "linux64": 0x500000, "linux32": 0x800000}[protocol]
    limit = min(memory, L.MMIO_HOLE_START)
    if protocol != "pvh":
        limit = min(limit, 0x80000000)  # initrd_addr_max + 1 (bzImage header; vmlinux default)
    return limit - kernel_end


def _check(plan, memory):
    ps = sorted(plan.placements, key=lambda p: p.addr)
    for a, b in zip(ps, ps[1:]):
        assert a.addr + a.size <= b.addr, (a, b)
    ram = [(a, a + s) for a, s in plan.ram_ranges]
    assert sum(s for _, s in plan.ram_ranges) == memory
    for p in ps:
        assert any(lo <= p.addr and p.addr + p.size <= hi for lo, hi in ram), p  # backed
        typ = E820Type.ACPI if p.name.startswith("acpi") else E820Type.RAM
        assert any(r.type == typ and r.addr <= p.addr and p.addr + p.size <= r.addr + r.size
                   for r in plan.e820), p
        assert p.addr % p.align == 0
    e = sorted(plan.e820, key=lambda r: r.addr)
    assert all(a.addr + a.size <= b.addr for a, b in zip(e, e[1:]))
    assert not any(r.addr < L.MMIO_HOLE_END and r.addr + r.size > L.MMIO_HOLE_START for r in e)


@settings(max_examples=60, deadline=None)
@given(memory=memory_sizes, protocol=protocols, fraction=st.floats(0, 1), cpus=st.integers(1, 255))
def test_plans_never_overlap_and_stay_in_ram(memory, protocol, fraction, cpus):
    room = _room(memory, protocol)
    initrd = int(room * fraction) // PAGE * PAGE if room > 0 else None
    plan = plan_guest(KERNELS[protocol], BootConfig(memory=memory, protocol=protocol, cpus=cpus,
                                                    cmdline="console=ttyS0"), initrd_size=initrd)
    _check(plan, memory)
    if initrd is not None:
        i = plan.find("initrd")
        assert i.size == initrd


@settings(max_examples=40, deadline=None)
@given(memory=memory_sizes, protocol=protocols, excess=st.integers(1, 64 * MiB))
def test_initrd_too_large_is_a_layout_error(memory, protocol, excess):
    room = _room(memory, protocol)
    try:
        plan_guest(KERNELS[protocol], BootConfig(memory=memory, protocol=protocol),
                   initrd_size=max(room, 0) + excess)
    except LayoutError as e:
        assert "does not fit" in str(e)
    else:
        raise AssertionError("an initrd larger than the room was placed")


# A relocatable PVH kernel (PHYS32_RELOC: 2 MiB alignment, window [16 MiB, 1 GiB - 1]), two segments.
RELOC = elf_kernel(segments=((0x1000000, 0x2000, 0x300000), (0x1400000, 0x1000, 0x1000)), pvh_entry=0x1000040,
                   reloc=(0x200000, 0x1000000, 0x3FFFFFFF))


@settings(max_examples=60, deadline=None)
@given(memory=st.integers(32, 4096).map(lambda m: m * MiB), seed=st.integers(0, 2**32 - 1),
       fraction=st.floats(0, 0.5))
def test_kaslr_plans_are_valid_and_replayable(memory, seed, fraction):
    initrd = int((min(memory, L.MMIO_HOLE_START) - 0x1500000) * fraction) // PAGE * PAGE
    config = BootConfig(memory=memory, protocol="pvh", kaslr_seed=seed, cmdline="console=ttyS0")
    plan = plan_guest(RELOC, config, initrd_size=initrd)
    _check(plan, memory)
    where = plan.kernel_placement
    assert where.load_addr % 0x200000 == 0 and where.load_addr >= 0x1000000
    assert where.load_addr + 0x401000 - 1 <= min(0x3FFFFFFF, memory - 1)
    # every segment and the entry moved by the same offset; the same seed gives the same plan
    assert [s.addr - where.offset for s in plan.segments] == [0x1000000, 0x1400000]
    assert plan.entry == 0x1000040 + where.offset
    assert plan_guest(RELOC, config, initrd_size=initrd).placements == plan.placements


@settings(max_examples=60, deadline=None)
@given(slot=st.integers(0, 600))
def test_explicit_load_address_is_taken_or_refused_in_one_line(slot):
    addr = slot * 0x100000  # every MiB: half of them off the 2 MiB alignment
    config = BootConfig(memory=2 * GiB, protocol="pvh", load_addr=addr)
    allowed = addr % 0x200000 == 0 and addr >= 0x1000000 and addr + 0x401000 - 1 <= 0x3FFFFFFF
    try:
        plan = plan_guest(RELOC, config)
    except LayoutError as e:
        assert not allowed and str(e).startswith(f"load address {addr:#x} is not allowed") and "\n" not in str(e)
    else:
        assert allowed and plan.kernel_placement.load_addr == addr
        _check(plan, 2 * GiB)
