"""Small helpers shared by the subcommands."""
from __future__ import annotations

import os
import re
import sys
import tempfile

from ..errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgGtT]?)(i?[bB])?\s*$")
_MULT = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """'512M', '6G', '16384K' -> bytes.  A bare number means MiB, as QEMU's -m does."""
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(f"invalid size {text!r} (use e.g. 512M or 6G)")
    return int(m.group(1)) * _MULT[m.group(2).lower()]


def write_atomically(path: str, chunks) -> None:
    """Write to a temporary file beside ``path`` and rename, so a failure leaves no partial file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".pvhboot-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def emit_report(report: dict, as_json: bool, print_human) -> None:
    """``--json``: the report as indented JSON on stdout; otherwise ``print_human(report)`` (rich)."""
    if as_json:
        import json

        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_human(report)
