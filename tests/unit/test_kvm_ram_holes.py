"""kvm/vm.py Vm.set_ram_holes: the memory slots that leave single 4 KiB pages out (the gdb stub's page
traps), checked on the KVM_SET_USER_MEMORY_REGION calls it makes (no /dev/kvm needed)."""
from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from pvhboot.kvm.vm import Vm

MiB = 1 << 20
REGIONS = [(0, 2 * MiB, 0x7F0000000000), (4 * MiB, 1 * MiB, 0x7F1000000000)]


def make_vm():
    vm = Vm(kvm=None, fd=-1)
    calls = []
    vm.set_user_memory_region = lambda slot, gpa, size, host, flags=0: calls.append((slot, gpa, size, host))
    vm.add_guest_memory(SimpleNamespace(regions=[SimpleNamespace(guest_addr=g, size=s, host_addr=h)
                                                 for g, s, h in REGIONS]))
    return vm, calls


def mapped_pages(vm) -> set[int]:
    pages = set()
    for gpa, size, host in vm._ram_slots.values():
        for region_gpa, region_size, region_host in REGIONS:  # the host address keeps the RAM's offset
            if region_gpa <= gpa < region_gpa + region_size:
                assert host - region_host == gpa - region_gpa
        pages.update(range(gpa, gpa + size, 0x1000))
    return pages


ALL = {p for g, s, _ in REGIONS for p in range(g, g + s, 0x1000)}


def test_one_slot_per_region_without_holes():
    vm, calls = make_vm()
    assert sorted(vm._ram_slots.values()) == sorted(REGIONS)
    assert [c[0] for c in calls] == [0, 1]


def test_a_hole_splits_only_its_region_and_deletes_before_it_adds():
    vm, calls = make_vm()
    calls.clear()
    vm.set_ram_holes({0x101000})
    assert mapped_pages(vm) == ALL - {0x101000}
    deleted = [c for c in calls if c[2] == 0]
    assert [c[1] for c in deleted] == [0]  # only the first region's slot goes
    assert calls.index(deleted[-1]) < min(i for i, c in enumerate(calls) if c[2])  # KVM refuses overlaps
    calls.clear()
    vm.set_ram_holes(set())
    assert mapped_pages(vm) == ALL and len(vm._ram_slots) == 2


@given(st.sets(st.sampled_from(sorted(ALL)), max_size=12), st.sets(st.sampled_from(sorted(ALL)), max_size=12))
def test_any_holes_then_any_others(first, second):
    vm, _ = make_vm()
    vm.set_ram_holes(first)
    assert mapped_pages(vm) == ALL - first
    vm.set_ram_holes(second)
    assert mapped_pages(vm) == ALL - second
    pieces = sorted(vm._ram_slots.values())
    assert all(a[0] + a[1] <= b[0] for a, b in zip(pieces, pieces[1:]))  # no two slots overlap
