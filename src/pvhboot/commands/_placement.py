"""``--load-addr ADDR`` and ``--kaslr[=SEED]``: where a command puts the kernel (boot, plan, run).

The plan (boot/plan.py) checks the address against the kernel's PHYS32_RELOC note (PVH) or its
setup header (Linux protocols) and draws the random address from the seed; the command only parses
the options, picks a seed when none is given, and prints it so that a failing boot can be replayed
with ``--kaslr=SEED``.
"""
from __future__ import annotations

import secrets
import sys

from ..errors import ConfigError


def add_placement_options(p) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--load-addr", metavar="ADDR", help="load the kernel at this guest-physical address "
                   "(PVH: inside the window of its PHYS32_RELOC note, aligned as the note asks)")
    g.add_argument("--kaslr", metavar="SEED", nargs="?", const="", default=None,
                   help="load the kernel at a random allowed address (SEED replays a previous choice; "
                        "the seed used is printed)")


def _int(text: str, what: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise ConfigError(f"invalid {what} {text!r} (a number, e.g. 0x4000000)") from None
    if value < 0:
        raise ConfigError(f"invalid {what} {text!r} (not negative)")
    return value


def placement_from_args(args) -> tuple[int | None, int | None]:
    """(load_addr, kaslr_seed) from the options; a fresh random seed for a bare ``--kaslr``."""
    load_addr = _int(args.load_addr, "--load-addr") if getattr(args, "load_addr", None) is not None else None
    kaslr = getattr(args, "kaslr", None)
    if kaslr is None:
        return load_addr, None
    return load_addr, _int(kaslr, "--kaslr seed") if kaslr else secrets.randbits(32)


def describe_placement(load_addr: int, link_addr: int, kaslr_seed: int | None) -> str | None:
    """One line about a moved kernel (None when it is at its own address)."""
    if kaslr_seed is None and load_addr == link_addr:
        return None
    how = f"--kaslr={kaslr_seed}" if kaslr_seed is not None else "--load-addr"
    return f"kernel loaded at {load_addr:#x} (linked at {link_addr:#x}; {how})"


def print_placement(where, stream=None) -> None:
    """Print ``where`` (a boot.config.KernelPlacement) when the kernel was moved."""
    line = describe_placement(where.load_addr, where.link_addr, where.kaslr_seed)
    if line:
        print(f"pvhboot: {line}", file=stream or sys.stderr, flush=True)
