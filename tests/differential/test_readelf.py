"""`pvhboot inspect --json` against GNU readelf (the independent oracle) on the real Debian kernel.

readelf reads the vmlinux that the lz4 tool decompressed (the debian_vmlinux fixture); pvhboot reads
both that vmlinux and the bzImage (decompressing it itself).  Every Xen note and every PT_LOAD
segment must agree, and the PVH entry must be the PHYS32_ENTRY note's value as readelf shows it.
"""
import json
import re
import subprocess

import pytest
from support import require_tool

from pvhboot.cli import main

# readelf names some note types even for a foreign owner (binutils readelf.c get_note_type):
# types 1, 2 and 4 are printed by name; everything else as "Unknown note type: (0x...)".
READELF_NOTE_NAMES = {"NT_VERSION (version)": 1, "NT_ARCH (architecture)": 2, "GO BUILDID": 4}
_LOAD = re.compile(r"^\s+LOAD\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+"
                   r"(0x[0-9a-f]+)\s+([RWE ]{3})\s+(0x[0-9a-f]+)\s*$")
_NOTE = re.compile(r"^\s+(\S+)\s+(0x[0-9a-f]+)\t(.*?)\t\s*description data:\s*((?:[0-9a-f]{2}\s*)*)$")
_ENTRY = re.compile(r"^Entry point (0x[0-9a-f]+)$", re.M)


@pytest.fixture(scope="module")
def readelf_facts(debian_vmlinux):
    require_tool("readelf")
    out = subprocess.run(["readelf", "-n", "-l", "-W", str(debian_vmlinux)], capture_output=True,
                         text=True, check=True).stdout
    loads = []
    for line in out.splitlines():
        m = _LOAD.match(line)
        if m:
            off, va, pa, fs, ms, flg, al = m.groups()
            flags = (4 if "R" in flg else 0) | (2 if "W" in flg else 0) | (1 if "E" in flg else 0)
            loads.append({"offset": int(off, 16), "vaddr": int(va, 16), "paddr": int(pa, 16),
                          "filesz": int(fs, 16), "memsz": int(ms, 16), "flags": flags, "align": int(al, 16)})
    xen = []
    for line in out.splitlines():
        m = _NOTE.match(line)
        if not m or m.group(1) != "Xen":
            continue
        size, typetext, hexdata = int(m.group(2), 16), m.group(3).strip(), m.group(4)
        u = re.fullmatch(r"Unknown note type: \((0x[0-9a-f]+)\)", typetext)
        ntype = int(u.group(1), 16) if u else READELF_NOTE_NAMES.get(typetext)
        assert ntype is not None, f"cannot read readelf's note type {typetext!r}: extend READELF_NOTE_NAMES"
        desc = bytes.fromhex(hexdata)
        assert len(desc) == size
        xen.append((ntype, desc))
    entry = int(_ENTRY.search(out).group(1), 16)
    assert loads and xen, "readelf output was not understood:\n" + out
    return {"loads": loads, "xen": xen, "entry": entry}


def _inspect(path, capsys) -> dict:
    assert main(["inspect", "--json", str(path)]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("which", ["bzimage", "vmlinux"])
def test_inspect_agrees_with_readelf(which, readelf_facts, debian_bzimage, debian_vmlinux, capsys):
    path = debian_bzimage if which == "bzimage" else debian_vmlinux
    r = _inspect(path, capsys)
    assert r["format"] == ("bzimage" if which == "bzimage" else "elf")

    # Every PT_LOAD segment, in order, every field readelf shows.
    assert r["segments"] == readelf_facts["loads"]

    # Every Xen note, in order: type, size and raw bytes ...
    ours = [(n["type"], bytes.fromhex(n["desc"])) for n in r["xen_notes"]]
    assert ours == readelf_facts["xen"]
    # ... and the decoded values, decoded here independently from readelf's bytes.
    for n, (ntype, desc) in zip(r["xen_notes"], readelf_facts["xen"]):
        if isinstance(n["value"], int):
            assert len(desc) in (4, 8) and n["value"] == int.from_bytes(desc, "little"), n
        elif isinstance(n["value"], str):
            assert n["value"] == desc.split(b"\0")[0].decode("ascii"), n
        elif isinstance(n["value"], list):
            width = 4 if ntype == 19 else 8
            assert n["value"] == [int.from_bytes(desc[i:i + width], "little") for i in range(0, len(desc), width)]

    # The PVH entry is PHYS32_ENTRY (18) as readelf shows it; xen_pv is ENTRY (1).
    by_type = dict(readelf_facts["xen"])
    assert 18 in by_type, "the Debian kernel is built with CONFIG_PVH=y and must carry PHYS32_ENTRY"
    assert r["entries"]["pvh"] == int.from_bytes(by_type[18], "little")
    assert r["entries"]["xen_pv"] == int.from_bytes(by_type[1], "little")
    assert r["e_entry"] == readelf_facts["entry"]
    if which == "vmlinux":
        assert r["entries"]["linux64"] == readelf_facts["entry"]  # already physical on x86-64
        assert r["entries"]["linux32"] is None
    else:
        assert r["boot_protocol"] == "2.15" and r["compression"] == "lz4"
        assert r["entries"]["linux32"] == r["setup_header"]["code32_start"]
        assert r["entries"]["linux64"] == r["setup_header"]["code32_start"] + 0x200
    assert r["linux_version"] and r["linux_version"].startswith("Linux version 6.")
