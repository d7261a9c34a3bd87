"""The VM options (--memory, --cpus, --protocol, --cmdline, --initrd, --timeout, --symbols,
--events-json, --no-coalesced-uart), declared once for every command that starts or plans a VM.

``add_vm_options(parser, ...)`` adds the subset a command takes, with that command's defaults;
``vm_config_from_args(args)`` turns the parsed text into a :class:`pvhboot.vmm.config.VmConfig`,
which validates everything once (a bad value is one ``pvhboot: error:`` line, exit 2).
"""
from __future__ import annotations

import argparse
import re

from ..errors import ConfigError

ALL_OPTIONS = ("memory", "cpus", "protocol", "cmdline", "initrd", "timeout", "symbols", "events_json",
               "coalesced_uart")
PLAN_OPTIONS = ("memory", "cpus", "protocol", "cmdline", "initrd")
"""What `plan` takes: the options that change the memory plan."""

_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgGtT]?)(i?[bB])?\s*$")
_MULT = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """'512M', '6G', '16384K' -> bytes.  A bare number means MiB, as QEMU's -m does."""
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(f"invalid size {text!r} (use e.g. 512M or 6G)")
    return int(m.group(1)) * _MULT[m.group(2).lower()]


def add_vm_options(parser: argparse.ArgumentParser, *, include=ALL_OPTIONS, memory: str = "512M",
                   timeout: float | None = None, protocols: tuple[str, ...] | None = None,
                   protocol: str = "auto") -> None:
    """Add the VM options named in ``include`` to ``parser``, with this command's defaults."""
    from ..boot.config import PROTOCOLS
    from ..boot.plan import MAX_CPUS

    choices = protocols or ("auto", *PROTOCOLS)
    unknown = set(include) - set(ALL_OPTIONS)
    if unknown:
        raise ValueError(f"unknown VM options {sorted(unknown)}")
    if "memory" in include:
        parser.add_argument("--memory", metavar="SIZE", default=memory,
                            help=f"guest RAM, e.g. 512M or 6G; a bare number is MiB (default {memory}). "
                                 "Mapped lazily: a guest larger than the host's free memory is fine "
                                 "until it touches the pages")
    if "cpus" in include:
        parser.add_argument("--cpus", metavar="N", type=int, default=1,
                            help=f"vCPUs, 1..{MAX_CPUS} (default 1)")
    if "protocol" in include:
        parser.add_argument("--protocol", choices=choices, default=protocol,
                            help="entry protocol" + ("; auto: PVH when the kernel has the Xen PHYS32_ENTRY "
                                                     "note, else linux64" if "auto" in choices else "")
                            + f" (default {protocol})")
    if "cmdline" in include:
        parser.add_argument("--cmdline", metavar="S", default="",
                            help="kernel command line (UTF-8 text)")
    if "initrd" in include:
        parser.add_argument("--initrd", metavar="FILE",
                            help="initial ramdisk (PVH module 0 / ramdisk_image); a non-empty regular file")
    if "timeout" in include:
        parser.add_argument("--timeout", metavar="S", type=float, default=timeout,
                            help="stop the guest after S seconds of wall time, with a report"
                                 + (f" (default {timeout:g})" if timeout is not None else ""))
    if "symbols" in include:
        parser.add_argument("--symbols", metavar="FILE",
                            help="System.map or ELF with symbols, for crash reports")
    if "events_json" in include:
        parser.add_argument("--events-json", metavar="FILE",
                            help="write the exit record and boot markers as JSON (a new path or a "
                                 "regular file; checked before the guest runs)")
    if "coalesced_uart" in include:
        parser.add_argument("--no-coalesced-uart", dest="coalesced_uart", action="store_false",
                            help="make every write to COM1's THR a full VM exit (by default THR is a "
                                 "coalesced PIO zone: KVM queues the bytes and pvhboot delivers them in order)")


def vm_config_from_args(args: argparse.Namespace, **overrides):
    """The :class:`VmConfig` for the VM options present in ``args`` (plus ``overrides``, e.g. the
    kernel, or the command line `run` composes)."""
    from ..vmm.config import VmConfig

    values = {}
    for name in ALL_OPTIONS:
        if hasattr(args, name):
            values[name] = getattr(args, name)
    if "memory" in values:
        values["memory"] = parse_size(values["memory"])
    values.update(overrides)
    return VmConfig(**values)
