"""Small helpers shared by the subcommands."""
from __future__ import annotations

import sys


def emit_report(report: dict, as_json: bool, print_human) -> None:
    """``--json``: the report as indented JSON on stdout; otherwise ``print_human(report)`` (rich)."""
    if as_json:
        import json

        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_human(report)
