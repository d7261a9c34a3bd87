"""A kernel's loadable modules: which files a guest must insmod, in order, for a set of drivers.

The tree is ``lib/modules/<release>/`` next to the kernel (a Debian .deb unpacked as
.cache/debian-kernel/current, or /lib/modules).  Dependencies come from ``modules.dep`` (depmod's
output: ``kernel/fs/fuse/virtiofs.ko: kernel/fs/fuse/fuse.ko ...``) when the tree has one; a .deb
ships without it (depmod runs at install time), so otherwise each module's own ``.modinfo``
``depends=`` field (what depmod reads) is used, with ``modules.order`` to find the files.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConfigError

_RELEASE = re.compile(r"vmlinu[xz]-(.+)$")


def module_tree(kernel_path: str | Path, release: str | None = None) -> Path | None:
    """``lib/modules/<release>`` for a kernel file named ``vmlinuz-<release>`` (or ``release``):
    beside its boot/ directory first, then /lib/modules.  None when there is none."""
    kernel_path = Path(kernel_path)
    if release is None:
        m = _RELEASE.search(kernel_path.name.removesuffix(".vmlinux"))
        if not m:
            return None
        release = m.group(1)
    for root in (kernel_path.resolve().parent.parent, Path("/")):
        tree = root / "lib" / "modules" / release
        if (tree / "modules.dep").is_file() or (tree / "modules.order").is_file():
            return tree
    return None


def _norm(name: str) -> str:
    return name.replace("-", "_")


def _name_of(rel: str) -> str:
    base = rel.rsplit("/", 1)[-1]
    return _norm(base.split(".ko")[0])


class ModuleTree:
    def __init__(self, tree: str | Path) -> None:
        self.tree = Path(tree)
        self.deps: dict[str, list[str]] = {}  # name -> names it needs (from modules.dep)
        self.paths: dict[str, str] = {}  # name -> path relative to the tree
        dep = self.tree / "modules.dep"
        if dep.is_file():
            for line in dep.read_text().splitlines():
                target, _, needs = line.partition(":")
                if not target:
                    continue
                self.paths[_name_of(target)] = target
                self.deps[_name_of(target)] = [_name_of(n) for n in needs.split()]
        else:
            order = self.tree / "modules.order"
            if not order.is_file():
                raise ConfigError(f"{self.tree}: neither modules.dep nor modules.order")
            for line in order.read_text().split():
                self.paths[_name_of(line)] = line
        self.builtin = set()
        builtin = self.tree / "modules.builtin"
        if builtin.is_file():
            self.builtin = {_name_of(line) for line in builtin.read_text().split()}

    def _depends(self, name: str) -> list[str]:
        if name not in self.deps:
            self.deps[name] = _modinfo_depends(self.tree / self.paths[name])
        return self.deps[name]

    def load_order(self, names: list[str]) -> list[Path]:
        """Files to insmod, dependencies first, each once; built-in modules need nothing."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(name: str, chain: tuple[str, ...]) -> None:
            name = _norm(name)
            if name in seen or name in self.builtin:
                return
            if name not in self.paths:
                raise ConfigError(f"module {name} is neither built into the kernel nor in {self.tree}")
            if name in chain:
                raise ConfigError(f"module dependency loop: {' -> '.join(chain + (name,))}")
            for dep in self._depends(name):
                visit(dep, chain + (name,))
            seen.add(name)
            order.append(name)

        for n in names:
            visit(n, ())
        return [self.tree / self.paths[n] for n in order]


    def dep_lines(self, names: list[str]) -> str:
        """A modules.dep holding just ``names`` and what they need (for a trimmed copy of the tree)."""
        lines = []
        for path in self.load_order(names):
            name = _name_of(path.name)
            deps = " ".join(self.paths[d] for d in self._depends(name) if d not in self.builtin)
            lines.append(f"{self.paths[name]}:{' ' + deps if deps else ''}")
        return "\n".join(lines) + "\n"


def _modinfo_depends(path: Path) -> list[str]:
    """The ``depends=`` field of a module's .modinfo section (NUL-separated key=value strings)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    if path.suffix != ".ko":
        raise ConfigError(f"{path}: compressed modules are not supported here (no modules.dep to read)")
    try:
        with open(path, "rb") as f:
            sec = ELFFile(f).get_section_by_name(".modinfo")
            data = sec.data() if sec is not None else b""
    except (OSError, ELFError) as e:
        raise ConfigError(f"{path}: cannot read the module's .modinfo ({e})") from None
    for field in data.split(b"\0"):
        if field.startswith(b"depends="):
            return [_norm(n) for n in field[8:].decode().split(",") if n]
    return []
