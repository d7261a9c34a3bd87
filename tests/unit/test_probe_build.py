"""The shipped probe ELF: its notes and entries, and that `make` rebuilds it byte for byte."""
from __future__ import annotations

import shutil
import subprocess

import pytest
from elftools.elf.elffile import ELFFile

from pvhboot.probe import probe_path, source_dir

XEN_ELFNOTE_PHYS32_ENTRY = 18


@pytest.fixture(scope="module")
def elf():
    with open(probe_path(), "rb") as f:
        e = ELFFile(f)
        symbols = {s.name: s["st_value"] for s in e.get_section_by_name(".symtab").iter_symbols()}
        notes = [(n["n_name"], n["n_type"], n["n_descdata"]) for seg in e.iter_segments()
                 if seg["p_type"] == "PT_NOTE" for n in seg.iter_notes()]
        loads = [(s["p_paddr"], s["p_vaddr"], s["p_filesz"], s["p_memsz"]) for s in e.iter_segments()
                 if s["p_type"] == "PT_LOAD"]
        yield {"entry": e.header["e_entry"], "machine": e.header["e_machine"], "symbols": symbols,
               "notes": notes, "loads": loads, "sections": [s.name for s in e.iter_sections()]}


def test_entries_and_notes(elf):
    assert elf["machine"] == "EM_X86_64"
    assert elf["entry"] == elf["symbols"]["startup_64"]  # e_entry: the Linux 64-bit protocol entry
    phys32 = [d for name, t, d in elf["notes"] if name == "Xen" and t == XEN_ELFNOTE_PHYS32_ENTRY]
    assert len(phys32) == 1
    assert int.from_bytes(phys32[0], "little") == elf["symbols"]["pvh_start32"] == 0x100000
    assert elf["loads"][0][:2] == (0x100000, 0x100000)  # linked and loaded at 1 MiB, paddr == vaddr
    assert elf["loads"][0][3] < 256 << 10  # small: fits 16 MiB guests with room to spare
    assert ".note.gnu.build-id" not in elf["sections"] and ".comment" not in elf["sections"]


def test_pvhboot_inspect_agrees(elf, capsys):
    import json

    from pvhboot.cli import main

    assert main(["inspect", "--json", str(probe_path())]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["entries"]["pvh"] == 0x100000 and doc["entries"]["linux64"] == elf["entry"]


def _toolchain_or_skip():
    for tool in ("gcc", "ld", "make"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed: the committed probe.elf is used as is")


def _build(src, out):
    subprocess.run(["make", "-s", "-C", str(src), f"OUT={out}"], check=True, capture_output=True)
    return (out / "probe.elf").read_bytes()


def test_rebuild_is_reproducible_and_matches_the_committed_elf(tmp_path):
    _toolchain_or_skip()
    # Two builds from two copies of the source in different directories: same bytes.
    a_src, b_src = tmp_path / "a" / "src", tmp_path / "elsewhere" / "deeper" / "src"
    for d in (a_src, b_src):
        shutil.copytree(source_dir(), d, ignore=shutil.ignore_patterns("*.o", "probe.elf"))
    (tmp_path / "out_a").mkdir()
    (tmp_path / "out_b").mkdir()
    first = _build(a_src, tmp_path / "out_a")
    second = _build(b_src, tmp_path / "out_b")
    assert first == second
    committed = probe_path().read_bytes()
    if first != committed:
        version = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        if "Debian 12.2.0" not in version:
            pytest.skip(f"the committed probe.elf was built with Debian gcc 12.2.0 / binutils 2.40; this is {version}")
        pytest.fail("probe.elf differs from a rebuild of src/: run `make probe` and commit the result")
