"""`pvhboot compare [KERNEL] [--paths LIST] [--cpus 1,2] [--memory 512M,6G] ...`

Boot one kernel through every entry path it supports (pvh, linux64, linux32 of a bzImage, linux64
of its extracted vmlinux) for each vCPU count and memory size, record a fingerprint of what the
kernel ended up with in each cell, and show field by field where the paths differ.  A difference
outside the allowed list (pvhboot.compare.rules, each with its reason) is a finding; so is a path
that does not boot.  Exit status 0 (no finding), 1 (findings), 2 (user error).

Without KERNEL the built-in probe is compared (its key=value report is the fingerprint); a Linux
kernel boots an initramfs whose collector prints the fingerprint and powers off.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

from ..errors import ConfigError
from .vm_options import parse_size

EXIT_FINDINGS = 1
BASELINE_LIMIT = 256 << 20  # a --json of hundreds of Linux cells is a few tens of MB


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"invalid --cpus {text!r} (a comma-separated list, e.g. 1,2)") from None
    if not values or min(values) < 1:
        raise ConfigError(f"invalid --cpus {text!r} (each at least 1)")
    return tuple(dict.fromkeys(values))


def _size_list(text: str) -> tuple[int, ...]:
    values = tuple(parse_size(v) for v in text.split(",") if v.strip())
    if not values:
        raise ConfigError(f"invalid --memory {text!r} (e.g. 512M,6G)")
    return tuple(dict.fromkeys(values))


def _fault_list(specs: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for spec in specs:
        name, sep, path = spec.partition(":")
        if not sep or not name or not path:
            raise ConfigError(f"invalid --seed-fault {spec!r} (NAME:PATH)")
        out.append((name, path))
    return tuple(out)


def add_parser(subparsers):
    p = subparsers.add_parser(
        "compare", help="boot a kernel through every entry path and show where early boot diverged",
        description="Boot KERNEL (default: the built-in probe) through each entry path, vCPU count and "
                    "memory size, fingerprint what the kernel ended up with, and show the fields that "
                    "differ between paths. Exit 0: no finding; 1: findings; 2: user error.")
    p.add_argument("kernel", metavar="KERNEL", nargs="?", help="bzImage or ELF vmlinux (default: the probe)")
    p.add_argument("--paths", metavar="LIST",
                   help="entry paths to compare (bzImage: pvh,linux64,linux32,linux64-vmlinux; "
                        "ELF: pvh,linux64; default: every path the kernel has)")
    p.add_argument("--cpus", metavar="LIST", default="1,2", help="vCPU counts (default 1,2)")
    p.add_argument("--memory", metavar="LIST", default="512M", help="memory sizes, e.g. 512M,6G (default 512M)")
    p.add_argument("--initrd", metavar="FILE",
                   help="probe: its module; Linux: an initramfs unpacked before the collector's "
                        "(concatenated archives; the collector's /init runs)")
    p.add_argument("--cmdline", metavar="S", default="", help="extra kernel command-line arguments")
    p.add_argument("--kaslr", action="store_true", help="Linux: leave KASLR on (default: boot with nokaslr)")
    p.add_argument("--timeout", metavar="S", type=float,
                   help="per-cell guest time limit (default 30 s for the probe, 120 s for Linux)")
    p.add_argument("--jobs", metavar="N", type=int, default=os.cpu_count() or 1,
                   help="cells booted at once (default: the core count)")
    p.add_argument("--retries", metavar="N", type=int, default=1,
                   help="boot a cell that crashed or timed out (before or after its fingerprint) again, "
                        "up to N times; one that then boots cleanly is reported as flaky, not as a "
                        "failed path (default 1)")
    p.add_argument("--json", metavar="FILE", dest="json_out", help="write every fingerprint and the diff as JSON")
    p.add_argument("--baseline", metavar="FILE", help="also compare against a saved --json (e.g. the "
                                                      "kernel before a patch): its paths join as baseline:PATH")
    p.add_argument("--cluster", metavar="ADDRESS", help="run the cells on a Dask distributed scheduler "
                                                         "(needs pvhboot[cluster])")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    # Test hook (tests/kvm/test_compare.py, the rig): a builder that breaks one path on purpose.
    p.add_argument("--seed-fault", metavar="NAME:PATH", action="append", default=[], help=argparse.SUPPRESS)
    return p


def _collector_initramfs(workdir: str, user_initrd: str | None) -> str:
    """The Linux collector's initramfs (busybox + collector.sh as `pvhboot run`'s command), after
    the user's initrd when one is given (the kernel unpacks concatenated newc archives in order)."""
    from ..compare.linux import GUEST_PATH, collector_script
    from .run import write_run_initramfs

    script = os.path.join(workdir, "collect.sh")
    with open(script, "wb") as f:
        f.write(collector_script())
    out = os.path.join(workdir, "collector.cpio")
    with open(out, "wb") as f:
        if user_initrd:
            with open(user_initrd, "rb") as src:
                while chunk := src.read(1 << 20):
                    f.write(chunk)
            pad = -f.tell() % 4
            f.write(b"\0" * pad)
        write_run_initramfs(f, ["sh", "/" + GUEST_PATH], files=[(script, GUEST_PATH)])
    return out


def _load_baseline(path: str, kind: str) -> list[dict]:
    import json

    from ..compare.engine import is_cell_record
    from ..files import read_regular

    try:
        data = json.loads(read_regular(path, "--baseline", BASELINE_LIMIT))
    except ValueError as e:
        raise ConfigError(f"--baseline {path}: not JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise ConfigError(f"--baseline {path}: not a `pvhboot compare --json` file")
    if data.get("collector") != kind:
        raise ConfigError(f"--baseline {path} holds {data.get('collector')} fingerprints, this run {kind}")
    cells = []
    for n, c in enumerate(data["cells"]):
        if not is_cell_record(c):
            raise ConfigError(f"--baseline {path}: cell record {n} is not one `pvhboot compare --json` writes "
                              "(path/cpus/memory/status, text fields, a fingerprint of strings)")
        c.setdefault("fingerprint", {})
        cells.append(c)
    return cells


def run(args) -> int:
    from ..compare.diff import count_findings
    from ..compare.engine import Options, plan_cells, run_cells
    from ..compare.rules import allowed_differences, rules_for
    from ..files import INITRD_LIMIT, check_output, check_regular
    from ..vmm.config import check_timeout

    if args.jobs < 1:
        raise ConfigError(f"invalid --jobs {args.jobs} (at least 1)")
    if not 0 <= args.retries <= 10:
        raise ConfigError(f"invalid --retries {args.retries} (0 to 10)")
    check_timeout(args.timeout)
    if args.initrd is not None:
        check_regular(args.initrd, "--initrd", INITRD_LIMIT)
    if args.json_out:
        check_output(args.json_out, "--json", inputs=[p for p in (args.kernel, args.initrd, args.baseline) if p])
    opts = Options(kernel=args.kernel, paths=args.paths, cpus=_int_list(args.cpus), memory=_size_list(args.memory),
                   initrd=args.initrd, cmdline=args.cmdline, timeout=args.timeout, kaslr=args.kaslr,
                   faults=_fault_list(args.seed_fault))
    with tempfile.TemporaryDirectory(prefix="pvhboot-compare-") as workdir:
        from ..compare.engine import is_probe

        if not is_probe(opts.kernel):
            from dataclasses import replace

            opts = replace(opts, initrd=_collector_initramfs(workdir, opts.initrd))
        kind, cells = plan_cells(opts, workdir)
        baseline = _load_baseline(args.baseline, kind) if args.baseline else None

        def progress(cell, result):
            if not args.quiet:
                print(f"pvhboot compare: {cell.path} {cell.cpus} vCPU {cell.memory >> 20} MiB: "
                      f"{result.get('status')} ({result.get('wall_s', '?')} s)", file=sys.stderr, flush=True)

        records = run_cells(cells, args.jobs, cluster=args.cluster, progress=progress, retries=args.retries)
    from ..compare.diff import compare_records

    rules = rules_for(kind)
    groups = compare_records(records, rules, baseline)
    findings = count_findings(groups)
    if args.json_out:
        import json

        doc = {"version": 1, "kernel": args.kernel or "probe", "collector": kind,
               "paths": list(dict.fromkeys(c.path for c in cells)), "findings": findings,
               "cells": records, "groups": [g.to_json() for g in groups],
               "allowed_differences": [{"field": f, "reason": r} for f, r in allowed_differences(kind)]}
        from ..files import write_output

        write_output(args.json_out, [json.dumps(doc, indent=1).encode() + b"\n"], "--json")
    from ..compare.report import print_flaky, print_report

    print_report(groups)
    print_flaky(records)
    return EXIT_FINDINGS if findings else 0
