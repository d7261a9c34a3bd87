"""`pvhboot boot [KERNEL] ...`: boot a kernel (default: the built-in probe) in a microVM on /dev/kvm.

Exit status: the guest's (0 after an ACPI power-off, a reset or Ctrl-A x; the value written to the
debug-exit port), 1 when the guest crashed or hit --timeout (the crash report goes to stderr),
2 for a user error (one line on stderr).
"""
from __future__ import annotations

import sys

from ..errors import ConfigError
from ._util import parse_size, write_atomically

EXIT_CRASH = 1


def add_parser(subparsers):
    p = subparsers.add_parser(
        "boot", help="boot a kernel (or the built-in probe) in a microVM",
        description="Boot an ELF vmlinux or a bzImage on KVM the PVH way (or with the Linux boot protocol). "
                    "Without KERNEL, boots pvhboot's built-in probe.")
    p.add_argument("kernel", metavar="KERNEL", nargs="?", help="ELF vmlinux or bzImage (default: the probe)")
    p.add_argument("--initrd", metavar="FILE", help="initial ramdisk (PVH module 0 / ramdisk_image)")
    p.add_argument("--cmdline", metavar="S", default="", help="kernel command line")
    p.add_argument("--memory", metavar="SIZE", default="512M", help="guest RAM, e.g. 512M or 6G (default 512M)")
    p.add_argument("--cpus", metavar="N", type=int, default=1, help="vCPUs (default 1)")
    p.add_argument("--protocol", choices=("auto", "pvh", "linux32", "linux64"), default="auto",
                   help="entry protocol; auto: PVH when the kernel has the Xen PHYS32_ENTRY note, else linux64")
    p.add_argument("--timeout", metavar="S", type=float, default=None,
                   help="stop the guest after S seconds of wall time, with a report")
    p.add_argument("--symbols", metavar="FILE", help="System.map or ELF with symbols, for crash reports")
    p.add_argument("--no-coalesced-uart", dest="coalesced_uart", action="store_false",
                   help="make every write to COM1's THR a full VM exit (by default THR is a coalesced "
                        "PIO zone: KVM queues the bytes and pvhboot delivers them in order)")
    p.add_argument("--events-json", metavar="FILE", help="write the exit record and boot markers as JSON")
    p.add_argument("--disk", action="append", default=[], metavar="PATH[,ro]",
                   help="raw disk image as a virtio-mmio block device (several allowed; found through ACPI)")
    p.add_argument("--share", action="append", default=[], metavar="HOST[:TAG]",
                   help="host directory through virtio-fs + virtiofsd (guest: mount -t virtiofs TAG DIR; "
                        "TAG defaults to share0, share1, ...)")
    return p


def run(args) -> int:
    from ..vmm import MicroVM

    memory = parse_size(args.memory)
    if args.cpus < 1:
        raise ConfigError(f"invalid --cpus {args.cpus} (at least 1)")
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError(f"invalid --timeout {args.timeout:g} (seconds > 0)")
    for name, path in (("--initrd", args.initrd), ("--symbols", args.symbols)):
        if path is not None:
            try:
                open(path, "rb").close()
            except OSError as e:
                raise ConfigError(f"cannot read {name} {path}: {e.strerror}") from None
    from ..vmm.virtio import DiskSpec, ShareSpec

    disks = [DiskSpec.parse(d) for d in args.disk]
    shares = [ShareSpec.parse(s, i) for i, s in enumerate(args.share)]
    stdin_is_tty = sys.stdin is not None and sys.stdin.isatty()
    with MicroVM(args.kernel, initrd=args.initrd, cmdline=args.cmdline, memory=memory, cpus=args.cpus,
                 protocol=args.protocol, timeout=args.timeout, symbols=args.symbols,
                 stdin=stdin_is_tty, coalesced_uart=args.coalesced_uart, disks=disks, shares=shares) as vm:
        record = vm.run()
    if args.events_json:
        write_atomically(args.events_json, [record.to_json_bytes()])
    if record.crash_report:
        sys.stdout.flush()
        sys.stderr.write(record.crash_report)
        sys.stderr.flush()
        return EXIT_CRASH
    return record.exit_code & 0xFF
