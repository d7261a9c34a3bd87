"""The e820 map as the kernel keeps it: Linux's e820__update_table() (arch/x86/kernel/e820.c).

Overlapping ranges are resolved by boundary sweep, the largest type number winning where ranges
overlap ("the larger the type, the more restrictive"), and adjacent ranges of one type are merged.
A PVH boot's boot_params carry the ISA range Linux appends over entries the VMM already gave, so
only the sanitised maps of two paths can be compared.
"""
from __future__ import annotations

from ..abi.e820 import E820Type


def sanitize_e820(entries) -> list[tuple[int, int, int]]:
    """[(addr, size, type)] -> the sanitised map, sorted, with no overlaps and no empty entries."""
    points = sorted({p for addr, size, _ in entries if size for p in (addr, addr + size)})
    out: list[tuple[int, int, int]] = []
    for start, end in zip(points, points[1:]):
        types = [t for addr, size, t in entries if size and addr <= start and end <= addr + size]
        if not types:
            continue
        t = max(types)
        if out and out[-1][2] == t and out[-1][0] + out[-1][1] == start:
            out[-1] = (out[-1][0], out[-1][1] + end - start, t)
        else:
            out.append((start, end - start, t))
    return out


def e820_text(entries) -> str:
    """One line per range, the kernel's own spelling: '[mem 0x...-0x...] usable'."""
    return "\n".join(f"[mem {a:#018x}-{a + s - 1:#018x}] {type_name(t)}" for a, s, t in entries)


def type_name(t: int) -> str:
    try:
        return E820Type(t).name.lower()
    except ValueError:
        return f"type {t}"


def ram_total(entries) -> int:
    return sum(size for _, size, t in entries if t == E820Type.RAM)
