"""The VM options (--memory, --cpus, --protocol, --cmdline, --initrd, --timeout, --symbols,
--events-json, --no-coalesced-uart, --load-addr / --kaslr[=SEED], --no-seccomp, --disk, --share), declared
once for every command that starts or plans a VM.

``add_vm_options(parser, ...)`` adds the subset a command takes, with that command's defaults;
``vm_config_from_args(args)`` turns the parsed text into a :class:`pvhboot.vmm.config.VmConfig`,
which validates everything once (a bad value is one ``pvhboot: error:`` line, exit 2).
"""
from __future__ import annotations

import argparse
import re

from ..errors import ConfigError

ALL_OPTIONS = ("memory", "cpus", "protocol", "cmdline", "initrd", "timeout", "symbols", "events_json",
               "coalesced_uart", "placement", "seccomp", "disks", "shares")
PLAN_OPTIONS = ("memory", "cpus", "protocol", "cmdline", "initrd", "placement")
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
    from ..boot.plan import MAX_CPUS
    from ..image.model import Protocol

    choices = protocols or Protocol.choices()
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
    if "placement" in include:
        g = parser.add_mutually_exclusive_group()
        g.add_argument("--load-addr", metavar="ADDR",
                       help="load the kernel at this guest-physical address: for PVH inside the window "
                            "of its PHYS32_RELOC note and aligned as the note asks; for a bzImage's Linux "
                            "protocols as its setup header allows (relocatable_kernel, kernel_alignment)")
        g.add_argument("--kaslr", metavar="SEED", nargs="?", const="", default=None,
                       help="load the kernel at a random allowed address; the seed used is printed, and "
                            "--kaslr=SEED replays that choice")
    if "seccomp" in include:
        parser.add_argument("--no-seccomp", dest="seccomp", action="store_false",
                            help="run the vCPU threads without their seccomp allow-list (for debugging a "
                                 "device; by default a syscall outside it stops the VM with a report)")
    _add_device_options(parser, include)


def _add_device_options(parser: argparse.ArgumentParser, include) -> None:
    if "disks" in include:
        parser.add_argument("--disk", dest="disks", action="append", default=[], metavar="PATH[,ro]",
                            help="raw disk image as a virtio-blk device (several allowed, /dev/vda, vdb, ... "
                                 "in order); ,ro: read-only (the guest sees VIRTIO_BLK_F_RO, writes fail)")
    if "shares" in include:
        parser.add_argument("--share", dest="shares", action="append", default=[], metavar="HOST[:TAG]",
                            help="host directory through virtio-fs, served by virtiofsd (the guest mounts "
                                 "it: mount -t virtiofs TAG DIR; TAG defaults to share0, share1, ...)")


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
    if getattr(args, "load_addr", None) is not None:
        values["load_addr"] = _address(args.load_addr, "--load-addr")
    kaslr = getattr(args, "kaslr", None)
    if kaslr is not None:  # a bare --kaslr draws a seed here, so that it can be printed and replayed
        import secrets

        values["kaslr_seed"] = _address(kaslr, "--kaslr seed") if kaslr else secrets.randbits(32)
    if "disks" in values or "shares" in values:
        from ..vmm.virtio import DiskSpec, ShareSpec

        values["disks"] = tuple(DiskSpec.parse(d) for d in values.get("disks", ()))
        values["shares"] = tuple(ShareSpec.parse(s, i) for i, s in enumerate(values.get("shares", ())))
    values.update(overrides)
    return VmConfig(**values)


def _address(text: str, what: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise ConfigError(f"invalid {what} {text!r} (a number, e.g. 0x4000000)") from None
    if value < 0:
        raise ConfigError(f"invalid {what} {text!r} (not negative)")
    return value


def describe_placement(load_addr: int, link_addr: int, kaslr_seed: int | None, virt_offset: int = 0) -> str | None:
    """One line about a moved kernel (None when it is at its own address)."""
    if kaslr_seed is None and load_addr == link_addr:
        return None
    how = f"--kaslr={kaslr_seed}" if kaslr_seed is not None else "--load-addr"
    virt = f"; virtual base moved by {virt_offset:#x}" if virt_offset else ""
    return f"kernel loaded at {load_addr:#x} (linked at {link_addr:#x}{virt}; {how})"


def print_placement(where) -> None:
    """On stderr, where a moved kernel went (a boot.config.KernelPlacement), before the guest runs."""
    import sys

    line = describe_placement(where.load_addr, where.link_addr, where.kaslr_seed, where.virt_offset)
    if line:
        print(f"pvhboot: {line}", file=sys.stderr, flush=True)
