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
import tomllib
from pathlib import Path

import pytest

PKG_DIR = Path(__file__).resolve().parents[2] / "src" / "pvhboot"
README = PKG_DIR.parents[1] / "README.md"
# The one machine-readable map: layer -> what it is and what it may import (and the special rules).
LAYER_MAP = tomllib.loads((Path(__file__).with_name("layers.toml")).read_text())
LAYERS: dict[str, dict] = LAYER_MAP["layers"]
# layer -> the other layers it may import (its own is always allowed).
ALLOWED: dict[str, set[str]] = {name: set(layer["may_import"]) for name, layer in LAYERS.items()}
RULES = LAYER_MAP["rules"]
DEVICES_MEMORY = set(RULES["devices_memory"])
STDLIB_ONLY = set(RULES["stdlib_only"])
IOCTL_MODULES = set(RULES["ioctl_modules"])


def layout_text() -> str:
    """The README's layout block, made from the map (layers with a path, in the map's order)."""
    rows = [(layer["path"], layer["summary"]) for layer in LAYERS.values() if "path" in layer]
    width = max(len(path) for path, _ in rows) + 2
    lines = ["src/pvhboot/"] + [f"  {path:<{width}}{summary}" for path, summary in rows]
    lines += ["tests/ unit/ property/ differential/ kvm/ rig/",
              "bench/       `make bench`: every measurement side by side with its peer, as ratios"]
    return "\n".join(lines) + "\n"


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
        elif top in IOCTL_MODULES and layer != RULES["ioctl_layer"]:
            bad.append(f"{where} (only kvm/ issues ioctls)")
    return bad


def test_every_layer_has_a_rule():
    layers = {layer_of(m) for m in _modules()}
    assert layers - set(ALLOWED) == set(), "a new layer: decide what it may import and add it to layers.toml"
    assert {"abi", "image", "memory", "kvm", "boot", "devices", "vmm", "commands", "cli", "rig", "probe",
            "initramfs"} <= layers
    for name, layer in LAYERS.items():
        assert set(layer) <= {"path", "summary", "may_import", "why"}, name
        assert ("path" in layer) == ("summary" in layer), name
        assert set(layer["may_import"]) <= set(LAYERS), f"{name} may import an unknown layer"


def test_readme_layout_is_the_map():
    """The README's Layout block is generated from layers.toml (print layout_text() to update it)."""
    text = README.read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1].lstrip("\n")
    assert block == layout_text(), "README layout differs from layers.toml:\n" + layout_text()


def test_the_runtime_does_not_choose_a_guest():
    """vmm/ boots the kernel it is given; the default guest (the probe) is the commands' choice."""
    assert "probe" not in ALLOWED["vmm"]
    assert not [t for s, _, t in IMPORTS if layer_of(s) == "vmm" and layer_of(t) == "probe"]


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
