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


def rich_console():
    """A rich Console for human output whose closed-pipe handling is the CLI's: rich's own
    (Console.on_broken_pipe) exits with status 1; a reader that went away is not an error, so the
    BrokenPipeError goes on to cli.main, which exits 0 quietly."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError

    return _Console()


def builtin_probe() -> str:
    """The built-in probe's path: what `boot` runs without KERNEL and `conformance` always runs."""
    from ..errors import ConfigError

    try:
        from ..probe import probe_path
    except ImportError:
        raise ConfigError("the built-in probe is not part of this installation; name a KERNEL") from None
    path = probe_path()
    if not path.exists():
        raise ConfigError(f"the probe is missing from this installation: {path}")
    return str(path)
