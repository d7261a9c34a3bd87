"""`pvhboot boot [KERNEL] ...`: boot a kernel (default: the built-in probe) in a microVM on /dev/kvm.

Exit status: the guest's (0 after an ACPI power-off, a reset or Ctrl-A x; the value written to the
debug-exit port), 1 when the guest crashed or hit --timeout (the crash report goes to stderr),
2 for a user error (one line on stderr).
"""

from __future__ import annotations

import sys

from ..files import write_output
from ._util import builtin_probe
from .vm_options import add_vm_options, print_placement, vm_config_from_args

EXIT_CRASH = 1
EXIT_STATUS_HELP = (
    "Exit status: the guest's -- 0 after an ACPI power-off, a reset or Ctrl-A x; the value V written "
    "to the debug-exit port 0xf4, as its low byte, except that a non-zero V whose low byte is 0 "
    "(0x100, 0x200, ...) exits 1, so a failure never reads as success (a V above 0xff is warned "
    "about on stderr). 1 when the "
    "guest crashed or hit --timeout (a crash report on stderr); 2 for a user error (one line on "
    "stderr).")


def add_parser(subparsers):
    p = subparsers.add_parser(
        "boot", help="boot a kernel (or the built-in probe) in a microVM",
        description="Boot an ELF vmlinux or a bzImage on KVM the PVH way (or with the Linux boot protocol). "
                    "Without KERNEL, boots pvhboot's built-in probe.")
    p.add_argument("kernel", metavar="KERNEL", nargs="?", help="ELF vmlinux or bzImage (default: the probe)")
    p.epilog = EXIT_STATUS_HELP
    add_vm_options(p)
    return p


def run(args) -> int:
    from ..vmm import MicroVM

    config = vm_config_from_args(args, kernel=args.kernel or builtin_probe())
    stdin_is_tty = sys.stdin is not None and sys.stdin.isatty()
    with MicroVM(config=config, stdin=stdin_is_tty) as vm:
        vm.build()
        print_placement(vm.loaded.plan.kernel_placement)
        record = vm.run()
    if config.events_json:
        write_output(config.events_json, [record.to_json_bytes()], "--events-json",
                     inputs=[p for p in (config.kernel, config.initrd, config.symbols) if p])
    if record.crash_report:
        sys.stdout.flush()
        sys.stderr.write(record.crash_report)
        sys.stderr.flush()
        return EXIT_CRASH
    if record.reason != "debug_exit":
        return record.exit_code & 0xFF
    from ..devices.debug_exit import exit_status

    status = exit_status(record.exit_code)
    if status != record.exit_code:
        print(f"pvhboot: warning: the guest's debug-exit value {record.exit_code:#x} is not an exit "
              f"status (one byte); exiting {status}", file=sys.stderr)
    return status
