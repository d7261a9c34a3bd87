"""The `pvhboot` command line.  Each subcommand lives in pvhboot.commands.<name> and exposes
``add_parser(subparsers)`` and ``run(args) -> int``; this module only dispatches and turns user
errors (:class:`PvhbootError`) into one line on stderr and exit status 2."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__
from .errors import PvhbootError

SUBCOMMANDS = ("inspect", "extract", "plan", "boot", "run", "conformance", "compare")
EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other user error
        self.exit(EXIT_USER_ERROR, f"pvhboot: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pvhboot", description="Boot x86 kernels the PVH way on KVM.")
    parser.add_argument("--version", action="version", version=f"pvhboot {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"pvhboot.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"pvhboot.commands.{name}":
                raise
            continue
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return EXIT_USER_ERROR
    try:
        status = int(args._run(args) or 0)
    except PvhbootError as e:
        print(f"pvhboot: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `pvhboot inspect K | head`: the reader went away after what it wanted; that is not an
        # error (exit 0, silent, as `yes | head` is from the shell's point of view).
        _discard_stdout()
        return 0
    try:
        sys.stdout.flush()  # here, so a reader that went away is seen now, not at interpreter exit
    except BrokenPipeError:
        _discard_stdout()  # the command's own status stands (e.g. the guest's, for `boot`)
    return status


def _discard_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
