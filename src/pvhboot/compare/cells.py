"""Cells: entry paths x vCPU counts x memory sizes, each a JSON-able spec a child process can boot.

Entry paths of a kernel file (issue 12):

* an ELF vmlinux: ``pvh`` (its PHYS32_ENTRY note) and ``linux64`` (its physical ELF entry);
* a bzImage: ``pvh`` (its payload, extracted to a vmlinux), ``linux64`` and ``linux32`` (the bzImage
  itself, through its setup header: the decompressor runs) and ``linux64-vmlinux`` (the extracted
  vmlinux's 64-bit entry: same kernel, no decompressor).

A path the kernel does not have (a vmlinux built without CONFIG_PVH) is left out of the default
list and refused by name when asked for.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import ConfigError

ELF_PATHS = ("pvh", "linux64")
BZIMAGE_PATHS = ("pvh", "linux64", "linux32", "linux64-vmlinux")


@dataclass(frozen=True)
class PathSpec:
    name: str  # as on the command line and in the table's header
    image: str  # "vmlinux" (the ELF, given or extracted) or "bzimage"
    protocol: str  # pvh | linux32 | linux64


def path_specs(image) -> dict[str, PathSpec]:
    """The entry paths ``image`` (a pvhboot.image.KernelImage) offers, by name, in the default order."""
    out: dict[str, PathSpec] = {}
    if image.format == "bzimage":
        if image.entries.pvh is not None:
            out["pvh"] = PathSpec("pvh", "vmlinux", "pvh")
        if image.entries.linux64 is not None:
            out["linux64"] = PathSpec("linux64", "bzimage", "linux64")
        out["linux32"] = PathSpec("linux32", "bzimage", "linux32")
        if image.elf is not None and image.elf.elf_class == 64:
            out["linux64-vmlinux"] = PathSpec("linux64-vmlinux", "vmlinux", "linux64")
    else:
        if image.entries.pvh is not None:
            out["pvh"] = PathSpec("pvh", "vmlinux", "pvh")
        if image.entries.linux64 is not None:
            out["linux64"] = PathSpec("linux64", "vmlinux", "linux64")
    return out


def choose_paths(available: dict[str, PathSpec], asked: str | None, kernel: str) -> list[PathSpec]:
    if not available:
        raise ConfigError(f"{kernel}: no entry path to compare (no PVH note, no 64-bit entry)")
    if not asked:
        return list(available.values())
    names = [n.strip() for n in asked.split(",") if n.strip()]
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise ConfigError(f"--paths {asked!r}: {', '.join(unknown) or 'empty'} not a path of {kernel} "
                          f"(it has: {', '.join(available)})")
    return [available[n] for n in dict.fromkeys(names)]


@dataclass(frozen=True)
class Cell:
    """One boot.  ``kernel`` is a host path, ``memory`` bytes; ``fault`` a seeded fault's name."""

    path: str
    protocol: str
    cpus: int
    memory: int
    kernel: str
    cmdline: str
    collector: str  # "probe" | "linux"
    timeout: float
    initrd: str | None = None
    link_text: int | None = None  # the vmlinux's link address of _text (KASLR offset), Linux only
    fault: str | None = None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Cell:
        return cls(**d)

    @property
    def group(self) -> tuple[int, int]:
        return (self.cpus, self.memory)
