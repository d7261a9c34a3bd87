"""The PVH probe: pvhboot's own small reference guest (source in ``src/``, built ELF shipped here).

The probe checks the PVH entry ABI (Xen docs/misc/pvh.pandoc, start_info.h) and the Linux 64-bit
boot protocol (Documentation/arch/x86/boot.rst) from inside the guest and reports on COM1; see
:mod:`pvhboot.probe.report` for the report format and the rule names.
"""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def probe_path() -> Path:
    """Path of the built probe ELF shipped inside the package."""
    return _HERE / "probe.elf"


def source_dir() -> Path:
    """The probe's source folder (GNU as + C + linker script + Makefile)."""
    return _HERE / "src"
