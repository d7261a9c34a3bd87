"""Pure ABI declarations: ctypes structures and IntEnums, each naming the header it mirrors.

Every binary structure pvhboot reads or writes is declared exactly once in this package, with its
size (and key offsets) asserted beside it.  Nothing here does I/O.
"""
import ctypes


def check_layout(struct: type[ctypes.Structure], sizeof: int, /, **offsets: int) -> None:
    """Assert a structure's size and field offsets against the values in its public header."""
    actual = ctypes.sizeof(struct)
    assert actual == sizeof, f"{struct.__name__}: sizeof {actual:#x} != {sizeof:#x}"
    for name, off in offsets.items():
        got = getattr(struct, name).offset
        assert got == off, f"{struct.__name__}.{name}: offset {got:#x} != {off:#x}"
