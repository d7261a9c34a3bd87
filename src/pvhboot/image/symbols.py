"""Kernel symbols for crash reports: address -> (function, offset), from an ELF .symtab or a System.map.

System.map is ``nm -n`` output (scripts/mksysmap): "<hex address> <type letter> <name>" per line;
text symbols have type t/T (and weak w/W).  An ELF's .symtab is read with pyelftools; function
symbols are STT_FUNC, plus untyped labels (assembly entry points such as startup_64) that live in an
executable section.  Lookup is a bisect over the sorted addresses, like kallsyms.
"""
from __future__ import annotations

import bisect
import os
from dataclasses import dataclass

from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

from ..errors import ImageError
from ..files import KERNEL_LIMIT, SYMBOL_MAP_LIMIT, open_regular
from .elf import _PARSE_ERRORS, ELF_MAGIC, _stream
from .model import ElfImage

_TEXT_TYPES = frozenset("tTwW")


@dataclass(frozen=True)
class Symbol:
    address: int
    name: str
    size: int = 0  # 0 when unknown (System.map)


class SymbolTable:
    """Sorted text symbols.  ``end`` bounds lookups (an address at or past it is not symbolized)."""

    def __init__(self, symbols, end: int | None = None, source: str = "") -> None:
        by_addr: dict[int, Symbol] = {}
        for s in symbols:
            by_addr.setdefault(s.address, s)  # aliases: keep the first, as System.map orders them
        self.symbols: tuple[Symbol, ...] = tuple(sorted(by_addr.values(), key=lambda s: s.address))
        self._addrs = [s.address for s in self.symbols]
        self.end = end
        self.source = source

    def __len__(self) -> int:
        return len(self.symbols)

    def lookup(self, addr: int) -> tuple[str, int] | None:
        """(name, offset) of the symbol containing ``addr`` (the nearest at or below it), or None."""
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0 or (self.end is not None and addr >= self.end):
            return None
        sym = self.symbols[i]
        return sym.name, addr - sym.address

    def format(self, addr: int) -> str:
        """'name+0x12' (kernel style) or the bare hex address."""
        hit = self.lookup(addr)
        return f"{hit[0]}+{hit[1]:#x}" if hit else f"{addr:#x}"

    @classmethod
    def from_system_map(cls, path: str | os.PathLike) -> SymbolTable:
        name = os.fspath(path)
        fd = open_regular(path, "symbol file", SYMBOL_MAP_LIMIT, error=ImageError)
        try:
            with os.fdopen(fd, encoding="ascii", errors="replace", closefd=False) as f:
                return cls._parse_system_map(f, name)
        except OSError as e:
            raise ImageError(f"cannot read symbol file {name}: {e.strerror or e}") from None
        finally:
            os.close(fd)

    @classmethod
    def _parse_system_map(cls, lines, name: str) -> SymbolTable:
        """``lines``: an iterable of System.map lines (a text file: read line by line, never whole)."""
        symbols, end, first = [], None, None
        for line in lines:
            if first is None:
                first = line.rstrip("\n")[:100]
            parts = line.split()
            if len(parts) < 3 or len(parts[1]) != 1:
                continue
            try:
                addr = int(parts[0], 16)
            except ValueError:
                continue
            if parts[2] == "_end":
                end = addr
            if parts[1] in _TEXT_TYPES:
                symbols.append(Symbol(addr, parts[2]))
        if not symbols:
            raise ImageError(f"{name}: no text symbols found (expected System.map lines like "
                             f"'ffffffff81000000 T _text'; first line: {first or ''!r})")
        return cls(symbols, end=end, source=name)

    @classmethod
    def from_elf(cls, elf: ElfImage | bytes | str | os.PathLike, source: str = "ELF") -> SymbolTable:
        """From an ELF's .symtab (an ElfImage, the file's bytes, or a path)."""
        if isinstance(elf, (str, os.PathLike)):
            from . import map_file

            source = os.fspath(elf)
            data = map_file(elf)
        elif isinstance(elf, ElfImage):
            data = elf.data
        else:
            data = elf
        try:
            f = ELFFile(_stream(data))
            symtab = f.get_section_by_name(".symtab")
            if symtab is None:
                raise ImageError(f"{source}: no .symtab section "
                                 "(a stripped kernel: pass its System.map with --symbols)")
            sections = [f.get_section(i) for i in range(f.num_sections())]
            exec_ranges = [(s["sh_addr"], s["sh_addr"] + s["sh_size"]) for s in sections
                           if s["sh_flags"] & SH_FLAGS.SHF_EXECINSTR and s["sh_size"]]
            symbols = []
            for sym in symtab.iter_symbols():
                kind, shndx = sym["st_info"]["type"], sym["st_shndx"]
                if not isinstance(shndx, int) or not sym.name:
                    continue  # SHN_UNDEF / SHN_ABS / ... are strings in pyelftools
                if kind == "STT_FUNC" or (kind == "STT_NOTYPE" and
                                          sections[shndx]["sh_flags"] & SH_FLAGS.SHF_EXECINSTR):
                    symbols.append(Symbol(sym["st_value"], sym.name, sym["st_size"]))
        except ImageError:
            raise
        except _PARSE_ERRORS as e:
            raise ImageError(f"{source}: malformed ELF symbol table: {type(e).__name__}: {e}") from None
        if not symbols:
            raise ImageError(f"{source}: .symtab has no function symbols")
        end = max(hi for _, hi in exec_ranges) if exec_ranges else None
        return cls(symbols, end=end, source=source)


def load_symbols(path: str | os.PathLike) -> SymbolTable:
    """A System.map or an ELF with .symtab, told apart by the ELF magic.  A regular file only: an
    ELF is mapped (at most KERNEL_LIMIT bytes), a System.map read line by line (SYMBOL_MAP_LIMIT)."""
    fd = open_regular(path, "symbol file", KERNEL_LIMIT, error=ImageError)
    try:
        magic = os.pread(fd, 4, 0)
        if magic == ELF_MAGIC:
            import mmap

            return SymbolTable.from_elf(mmap.mmap(fd, 0, access=mmap.ACCESS_READ), source=os.fspath(path))
    except OSError as e:
        raise ImageError(f"cannot read symbol file {os.fspath(path)}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    return SymbolTable.from_system_map(path)
