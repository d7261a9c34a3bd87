"""ACPI tables written by boot/ against ACPICA's disassembler (iasl -d), an independent oracle."""
import re
import shutil
import subprocess

import pytest

from pvhboot.boot.acpi import configure_acpi
from pvhboot.memory import GuestMemory


def _iasl():
    path = shutil.which("iasl")
    if not path:
        pytest.skip("iasl is not installed (Debian package acpica-tools; scripts/setup-tests.sh installs it)")
    return path


def _tables_from_memory(cpus):
    """Follow the pointers as a guest would: RSDP -> XSDT -> FADT/MADT, FADT -> DSDT."""
    with GuestMemory([(0, 0x100000)]) as mem:
        rsdp_addr = configure_acpi(mem, cpus)
        rsdp = mem.read(rsdp_addr, 36)
        xsdt_addr = int.from_bytes(rsdp[24:32], "little")

        def table(addr):
            length = int.from_bytes(mem.read(addr + 4, 4), "little")
            return mem.read(addr, length)

        xsdt = table(xsdt_addr)
        out = {"RSDP": rsdp, "XSDT": xsdt}
        for off in range(36, len(xsdt), 8):
            t = table(int.from_bytes(xsdt[off : off + 8], "little"))
            out[t[:4].decode()] = t
        out["DSDT"] = table(int.from_bytes(out["FACP"][140:148], "little"))
        return out


def _disassemble(tmp_path, name, data):
    src = tmp_path / f"{name.lower()}.dat"
    src.write_bytes(data)
    r = subprocess.run([_iasl(), "-d", str(src)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    text = r.stdout + r.stderr
    assert r.returncode == 0, text
    assert not re.search(r"\b[1-9]\d* Errors?\b|\bError\s+\d{4}", text), text
    dsl = (tmp_path / f"{name.lower()}.dsl").read_text()
    assert "Invalid" not in dsl and "**** " not in dsl, dsl
    return dsl


@pytest.mark.parametrize("cpus", [1, 2, 8])
def test_tables_decompile_and_madt_lists_cpus(tmp_path, cpus):
    tables = _tables_from_memory(cpus)
    assert set(tables) == {"RSDP", "XSDT", "FACP", "APIC", "DSDT"}
    for name, data in tables.items():
        if name != "RSDP":
            assert sum(data) % 256 == 0, f"{name} checksum"
    assert sum(tables["RSDP"][:20]) % 256 == 0 and sum(tables["RSDP"]) % 256 == 0

    madt = _disassemble(tmp_path, "APIC", tables["APIC"])
    assert len(re.findall(r"Subtable Type : 00 \[Processor Local APIC\]", madt)) == cpus
    ids = re.findall(r"Local Apic ID : ([0-9A-F]{2})", madt)
    assert [int(i, 16) for i in ids] == list(range(cpus))
    assert len(re.findall(r"Processor Enabled : 1", madt)) == cpus
    assert re.search(r"Address : FEC00000", madt) and re.search(r"Interrupt : 00000002", madt)

    fadt = _disassemble(tmp_path, "FACP", tables["FACP"])
    assert re.search(r"Hardware Reduced \(V5\) : 1", fadt)
    assert re.search(r"Address : 00000000000003C0", fadt) and re.search(r"Address : 00000000000003C1", fadt)

    xsdt = _disassemble(tmp_path, "XSDT", tables["XSDT"])
    assert len(re.findall(r"ACPI Table Address\s+\d+ :", xsdt)) == 2

    dsdt = _disassemble(tmp_path, "DSDT", tables["DSDT"])
    assert 'EisaId ("PNP0501")' in dsdt
    assert re.search(r"IO \(Decode16,\s+0x03F8,\s+// Range Minimum\s+0x03F8,", dsdt)
    assert re.search(r"IRQNoFlags \(\)\s+\{4\}", dsdt)
    assert re.search(r"Name \(_S5, Package \(0x04\)[^{]*\{\s+0x05,", dsdt)
