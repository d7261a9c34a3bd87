"""SymbolTable from a System.map and from an ELF .symtab."""
import imagekit
import pytest

from pvhboot.errors import ImageError
from pvhboot.image import parse_elf
from pvhboot.image.symbols import SymbolTable, load_symbols

SYSTEM_MAP = """\
0000000000000000 A VDSO32_PRELINK
ffffffff81000000 T _stext
ffffffff81000000 T _text
ffffffff81000070 T secondary_startup_64
ffffffff81001000 t early_idt_handler_common
ffffffff81002000 D some_data
ffffffff82000000 T _etext
ffffffff83000000 T init_text_fn
ffffffff84000000 B _end
"""


def test_system_map_lookup(tmp_path):
    path = tmp_path / "System.map"
    path.write_text(SYSTEM_MAP)
    st = SymbolTable.from_system_map(path)
    assert st.lookup(0xFFFFFFFF81000000) == ("_stext", 0)  # first alias wins, as nm -n orders them
    assert st.lookup(0xFFFFFFFF81000075) == ("secondary_startup_64", 5)
    assert st.lookup(0xFFFFFFFF81001FFF) == ("early_idt_handler_common", 0xFFF)
    assert st.lookup(0xFFFFFFFF83000010) == ("init_text_fn", 0x10)
    assert st.lookup(0xFFFFFFFF80FFFFFF) is None  # below the first text symbol
    assert st.lookup(0xFFFFFFFF84000000) is None  # at or past _end
    assert st.format(0xFFFFFFFF81000075) == "secondary_startup_64+0x5"
    assert st.format(0x1234) == "0x1234"
    assert "some_data" not in {s.name for s in st.symbols}


def test_system_map_without_text_symbols(tmp_path):
    path = tmp_path / "map"
    path.write_text("garbage\nffffffff81002000 D some_data\n")
    with pytest.raises(ImageError, match="no text symbols found"):
        SymbolTable.from_system_map(path)


def test_elf_symtab(tmp_path):
    base = 0xFFFFFFFF81000000
    blob = imagekit.build_elf(symbols=[
        ("startup_64", base, 0x40, imagekit.STT_FUNC),
        ("foo", base + 0x40, 0x20, imagekit.STT_FUNC),
        ("asm_label", base + 0x100, 0, imagekit.STT_NOTYPE),
        ("a_variable", base + 0x180, 8, imagekit.STT_OBJECT),
    ])
    for source in (blob, parse_elf(blob)):
        st = SymbolTable.from_elf(source)
        assert [s.name for s in st.symbols] == ["startup_64", "foo", "asm_label"]
        assert st.lookup(base + 0x4F) == ("foo", 0xF)
        assert st.lookup(base + 0x1F0) == ("asm_label", 0xF0)
        assert st.lookup(base + 0x200) is None  # end of .text
        assert st.lookup(base - 1) is None
    path = tmp_path / "vmlinux"
    path.write_bytes(blob)
    assert load_symbols(path).lookup(base + 1) == ("startup_64", 1)


def test_elf_without_symtab():
    with pytest.raises(ImageError, match="no .symtab section"):
        SymbolTable.from_elf(imagekit.build_elf())


def test_debian_system_map_stub_is_refused_clearly(debian_system_map):
    # Debian ships a one-line stub ("The real System.map is in the linux-image-<version>-dbg
    # package"): it must be refused with that line quoted, not give an empty table.
    text = debian_system_map.read_text()
    if len(text.splitlines()) > 1000:
        st = load_symbols(debian_system_map)
        addr = {ln.split()[2]: int(ln.split()[0], 16) for ln in text.splitlines() if ln.split()[1] in "tT"}
        assert st.lookup(addr["startup_64"] + 3) == ("startup_64", 3)
        return
    with pytest.raises(ImageError, match="no text symbols found .*The real System.map"):
        load_symbols(debian_system_map)
