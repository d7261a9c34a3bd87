"""Dependency direction between pvhboot's layers (team brief, /work/shared/docs/architecture.md).

Every module under src/pvhboot is parsed with ``ast``; every import it contains counts: top-level,
relative (``from ..memory import layout``), under ``if TYPE_CHECKING`` and lazy imports inside
functions.  A layer is the first component under ``pvhboot`` (``abi``, ``kvm``, ...; ``errors``,
``initramfs``, ``cli`` for the top-level modules; ``pvhboot`` for the package's own __init__).

Not seen by ``ast``: cli.py discovers the subcommands with ``importlib.import_module(f"pvhboot.commands.{name}")``
(cli may use anything, so nothing is lost).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PKG_DIR = Path(__file__).resolve().parents[2] / "src" / "pvhboot"

# layer -> the other layers it may import (its own is always allowed).  What each uses today is in
# the comment when it is less than what the rule allows.
ALLOWED: dict[str, set[str]] = {
    "pvhboot": set(),  # the package __init__ (__version__): importing pvhboot.X must not pull in a layer
    "errors": set(),
    # Opening the files a user names (regular files only, size limits, safe outputs): below every
    # layer that reads or writes one (image, boot's initrd loader, vmm's config, commands).
    "files": {"errors"},
    "abi": {"errors"},  # pure declarations; uses nothing of pvhboot today (check_layout is abi's own)
    "image": {"abi", "errors", "files"},
    "memory": {"abi", "errors"},  # uses errors only
    "kvm": {"abi", "errors", "memory"},  # uses abi + errors only: memory slots take host addresses as ints
    "boot": {"abi", "image", "memory", "errors", "files"},  # no image import today: kernels are passed in as facts
    "devices": {"abi", "memory", "errors"},  # memory: layout constants only (see DEVICES_MEMORY)
    "probe": {"errors"},  # probe_path() and the report parser; uses nothing of pvhboot today
    "initramfs": {"errors"},  # the newc writer is a library leaf
    # vmm boots the kernel it is given: choosing the probe is the commands' job (issue 11).
    "vmm": {"pvhboot", "errors", "files", "abi", "image", "memory", "kvm", "boot", "devices", "initramfs"},
    # `pvhboot compare`'s engine (cells, fingerprints, field rules, diff, local pool, Dask backend):
    # an application of the VMM beside commands/, which drives it; it never imports commands/.
    "compare": {"pvhboot", "errors", "files", "abi", "image", "memory", "boot", "probe", "vmm"},
    "commands": {"pvhboot", "errors", "files", "abi", "image", "memory", "kvm", "boot", "devices", "probe", "initramfs",
                 "vmm", "compare"},
    "cli": {"pvhboot", "errors", "files", "abi", "image", "memory", "kvm", "boot", "devices", "probe", "initramfs",
            "vmm", "commands", "compare"},
    "__main__": {"cli"},
    # The nested-rig builder is an application of its own (`python -m pvhboot.rig`), beside the CLI:
    # it reuses commands.run's guest-initramfs writer and hashes that module's source into its cache key,
    # and extracts the outer kernel with image/ (QEMU's microvm PVH loader takes an ELF, not a bzImage).
    "rig": {"initramfs", "errors", "commands", "image"},
}
# devices know the guest's physical layout, never GuestMemory itself.
DEVICES_MEMORY = {"pvhboot.memory.layout"}
# Only these layers may import a non-stdlib package (abi is pure ctypes + enums).
STDLIB_ONLY = {"pvhboot", "errors", "abi"}
# "kvm/ is the only code that calls ioctl": fcntl is its tool.
IOCTL_MODULES = {"fcntl"}


def _module_name(path: Path) -> tuple[str, bool]:
    """('pvhboot.x.y', is_package) for a source file."""
    parts = list(path.relative_to(PKG_DIR.parent).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts.pop()
    return ".".join(parts), is_pkg


def _modules() -> dict[str, Path]:
    return {_module_name(p)[0]: p for p in sorted(PKG_DIR.rglob("*.py"))}


def imported_names(source: str, module: str, is_pkg: bool, known: set[str]) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import anywhere in ``source``.  ``from P import n``
    names P.n when that is a module in ``known`` (a submodule), else P."""
    package = module if is_pkg else module.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                if node.level - 1 > len(parts) - 1:
                    raise AssertionError(f"{module}:{node.lineno}: relative import climbs out of the package")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((node.lineno, sub if sub in known else base))
    return out


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports() -> list[tuple[str, int, str]]:
    """(importing module, line, imported module) over the whole package."""
    mods = _modules()
    known = set(mods)
    out = []
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        out += [(name, line, target) for line, target in imported_names(path.read_text(), name, is_pkg, known)]
    return out


IMPORTS = _imports()


def _violations(layer: str) -> list[str]:
    bad = []
    for src, line, target in IMPORTS:
        if layer_of(src) != layer:
            continue
        top = target.split(".")[0]
        where = f"{src}:{line} imports {target}"
        if top == "pvhboot":
            dst = layer_of(target)
            if dst != layer and dst not in ALLOWED[layer]:
                bad.append(f"{where} ({layer} -> {dst} is not allowed)")
            elif layer == "devices" and dst == "memory" and target not in DEVICES_MEMORY:
                bad.append(f"{where} (devices may use only {sorted(DEVICES_MEMORY)} of memory)")
        elif layer in STDLIB_ONLY and top not in sys.stdlib_module_names:
            bad.append(f"{where} ({layer} uses the standard library only)")
        elif top in IOCTL_MODULES and layer != "kvm":
            bad.append(f"{where} (only kvm/ issues ioctls)")
    return bad


def test_every_layer_has_a_rule():
    layers = {layer_of(m) for m in _modules()}
    assert layers - set(ALLOWED) == set(), "a new layer: decide what it may import and add it to ALLOWED"
    assert {"abi", "image", "memory", "kvm", "boot", "devices", "vmm", "commands", "cli"} <= layers


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_what_it_may(layer):
    bad = _violations(layer)
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_the_scan_sees_the_known_edges():
    """The scanner finds real edges of each kind (module-level, relative, lazy in a function), so an
    empty violation list means something."""
    edges = {(layer_of(s), layer_of(t)) for s, _, t in IMPORTS if t.split(".")[0] == "pvhboot"}
    assert {("vmm", "kvm"), ("vmm", "boot"), ("vmm", "devices"), ("boot", "memory"), ("kvm", "abi"),
            ("devices", "memory"), ("commands", "vmm"), ("rig", "commands")} <= edges


def test_resolver_on_relative_and_lazy_imports():
    known = {"pvhboot.memory", "pvhboot.memory.layout", "pvhboot.kvm", "pvhboot.kvm.vm", "pvhboot.devices",
             "pvhboot.devices.bus"}
    src = ("import os\n"
           "from . import bus\n"
           "from ..memory import layout as L, GuestMemory\n"
           "def f():\n"
           "    from ..kvm.vm import Vm\n"
           "    import pvhboot.kvm\n")
    got = imported_names(src, "pvhboot.devices.irq", False, known)
    assert got == [(1, "os"), (2, "pvhboot.devices.bus"), (3, "pvhboot.memory.layout"), (3, "pvhboot.memory"),
                   (5, "pvhboot.kvm.vm"), (6, "pvhboot.kvm")]
    # from a package's __init__, "." is the package itself
    assert imported_names("from .layout import X\n", "pvhboot.memory", True, known) == \
        [(1, "pvhboot.memory.layout")]


def test_a_violation_is_reported(monkeypatch):
    """The rules catch a devices module importing kvm, devices reaching past memory.layout, abi using a
    third-party package and ioctl outside kvm/ (made-up import records, not the real tree)."""
    fake = [("pvhboot.devices.serial", 99, "pvhboot.kvm.vm"), ("pvhboot.devices.bus", 7, "pvhboot.memory"),
            ("pvhboot.abi.kvm", 3, "rich"), ("pvhboot.vmm.cpu", 5, "fcntl")]
    monkeypatch.setattr(sys.modules[__name__], "IMPORTS", fake)
    assert _violations("devices") == [
        "pvhboot.devices.serial:99 imports pvhboot.kvm.vm (devices -> kvm is not allowed)",
        "pvhboot.devices.bus:7 imports pvhboot.memory (devices may use only ['pvhboot.memory.layout'] of memory)",
    ]
    assert _violations("abi") == ["pvhboot.abi.kvm:3 imports rich (abi uses the standard library only)"]
    assert _violations("vmm") == ["pvhboot.vmm.cpu:5 imports fcntl (only kvm/ issues ioctls)"]
