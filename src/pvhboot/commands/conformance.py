"""`pvhboot conformance [options] [-- VMM COMMAND ...]`: run the probe and judge the boot ABI.

Without a VMM command the probe runs under pvhboot itself (:class:`pvhboot.vmm.MicroVM`).  With one,
``{probe}`` in its arguments is replaced by the probe's path and the command's output is read as the
guest console, e.g. for QEMU::

    pvhboot conformance -- qemu-system-x86_64 -M microvm,accel=tcg -m 64 -kernel {probe} \\
        -nographic -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=4

The probe's report (see :mod:`pvhboot.probe.report`) is printed as a table: each ABI rule, pass,
fail or unverifiable, and what the probe saw.  Exit status 0 when the probe passed, 1 when it failed
(or died without a verdict), 2 for a user error.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError
from ..files import CONSOLE_LOG_LIMIT, read_regular
from ..image.model import Protocol
from ._util import builtin_probe, rich_console
from .vm_options import add_vm_options, vm_config_from_args

PLACEHOLDER = "{probe}"
REPORT_START = b"probe.version="  # the probe's first fact line (probe/report.py)
EXIT_FAIL = 1


def add_parser(subparsers):
    p = subparsers.add_parser(
        "conformance", help="run the probe under pvhboot or another VMM and check the boot ABI",
        description="Run pvhboot's probe guest (under pvhboot, or under the VMM command given after --, "
                    f"with {PLACEHOLDER} replaced by the probe's path) and print each ABI rule it checked.")
    add_vm_options(p, include=("memory", "cpus", "initrd", "cmdline", "protocol", "timeout", "placement",
                                "seccomp"),
                   memory="64M", timeout=60.0, protocols=(Protocol.PVH.value, Protocol.LINUX64.value), protocol="pvh")
    p.add_argument("--report", metavar="FILE", help="judge a saved console log instead of running a VMM")
    p.add_argument("--facts", action="store_true", help="also print every fact the probe reported")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    # REMAINDER keeps a lone "--" (nargs="*" drops it), so `conformance --` with nothing after it
    # is refused instead of silently meaning "under pvhboot".
    p.add_argument("vmm", nargs=argparse.REMAINDER, metavar="-- VMM COMMAND",
                   help=f"another VMM's command line with {PLACEHOLDER}")
    return p


def run_under_pvhboot(args) -> tuple[bytes, str]:
    """The probe under pvhboot's own runtime: (console bytes, one line about how it ended)."""
    from ..vmm import MicroVM

    with MicroVM(config=vm_config_from_args(args, kernel=builtin_probe()), console=None) as vm:
        record = vm.run()
    if record.crash_report:
        sys.stderr.write(record.crash_report)
    return record.console, f"pvhboot: {record.reason}, exit code {record.exit_code}"


def build_vmm_command(argv: list[str], probe: str) -> list[str]:
    """Substitute the probe's path for every {probe}; refuse a command line without one."""
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise ConfigError("empty VMM command after --")
    if not any(PLACEHOLDER in a for a in argv):
        raise ConfigError(f"the VMM command must contain {PLACEHOLDER} where the probe's path goes: {' '.join(argv)!r}")
    return [a.replace(PLACEHOLDER, probe) for a in argv]


def run_external(argv: list[str], timeout: float) -> tuple[bytes, str]:
    """Another VMM: its stdout is the console (stderr is read too when stdout holds no report).
    A VMM that ends before the probe said anything (a bad option, a missing file) is the user's
    error, shown with the VMM's own exit status and last stderr line."""
    import subprocess  # lazily: `pvhboot boot` imports every subcommand module (cli.build_parser)

    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except FileNotFoundError:
        raise ConfigError(f"VMM command not found: {argv[0]}") from None
    except OSError as e:  # not executable, a directory, ...
        raise ConfigError(f"cannot run the VMM command {argv[0]}: {e.strerror or e}") from None
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"") + (b"" if REPORT_START in (e.stdout or b"") else e.stderr or b"")
        return out, f"{argv[0]}: killed after {timeout:g} s"
    if REPORT_START not in proc.stdout + proc.stderr and proc.returncode != 0:
        said = [line.strip() for line in proc.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
        status = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                  else f"exit status {proc.returncode}")
        raise ConfigError(f"the VMM {argv[0]} failed ({status}) before the probe reported"
                          + (f": {said[-1][:300]}" if said else " and printed nothing on stderr"))
    out = proc.stdout if REPORT_START in proc.stdout else proc.stdout + proc.stderr
    return out, f"{argv[0]}: exit status {proc.returncode}"


def report_json(report, how: str) -> dict:
    return {
        "verdict": "pass" if report.passed else "fail",
        "complete": report.complete,
        "failed": list(report.failed),
        "vmm": how,
        "rules": [{"name": r.name, "status": r.status, "seen": r.seen, "source": r.source,
                   "rule": r.description} for r in report.rules],
        "facts": report.facts,
    }


def print_table(report, how: str, show_facts: bool) -> None:
    from rich.markup import escape  # what the guest printed (and the VMM command) is data, never markup
    from rich.table import Table

    console = rich_console()
    style = {"pass": "green", "fail": "bold red", "unverifiable": "yellow"}
    protocol = report.facts.get("probe.protocol", "?")
    table = Table(title=escape(f"PVH probe conformance ({protocol} entry; {how})"), title_justify="left")
    table.add_column("rule", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("ABI", overflow="fold")
    table.add_column("seen", overflow="fold")
    for r in report.rules:
        table.add_row(escape(r.name), f"[{style[r.status]}]{escape(r.status)}[/]", escape(r.description),
                      escape(r.seen))
    console.print(table)
    if show_facts:
        facts = Table(title="facts", title_justify="left")
        facts.add_column("key", no_wrap=True)
        facts.add_column("value", overflow="fold")
        for k, v in report.facts.items():
            facts.add_row(escape(k), escape(v))
        console.print(facts)
    counts = {s: sum(1 for r in report.rules if r.status == s) for s in style}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    if report.passed:
        console.print(f"[green]PROBE PASS[/] ({summary})")
    else:
        console.print(f"[bold red]PROBE FAIL[/] ({summary}): {escape('; '.join(report.failed))}")


def run(args) -> int:
    from ..probe.report import parse_report

    if args.report:
        if args.vmm:
            raise ConfigError("--report and a VMM command exclude each other")
        output = read_regular(args.report, "--report", CONSOLE_LOG_LIMIT)
        how = f"log {args.report}"
    elif args.vmm:
        output, how = run_external(build_vmm_command(list(args.vmm), builtin_probe()), args.timeout)
    else:
        output, how = run_under_pvhboot(args)
    report = parse_report(output)
    if args.json:
        import json

        print(json.dumps(report_json(report, how), indent=2))
    else:
        print_table(report, how, args.facts)
    return 0 if report.passed else EXIT_FAIL
