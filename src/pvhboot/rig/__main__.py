"""`python3 -m pvhboot.rig [--rebuild] [--timeout S] [--quiet] -- CMD ARGS...`: run a command in
the nested rig (QEMU TCG + kvm_amd) and exit with its status.  `--build` only builds the archive."""
from __future__ import annotations

import argparse
import sys

from . import RigBuildError, RigError, build_rig, run_in_rig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m pvhboot.rig", description=__doc__)
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached rig archive")
    p.add_argument("--build", action="store_true", help="only build (or find) the archive")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--memory", default="3G", help="the rig's (outer) RAM")
    p.add_argument("--quiet", action="store_true", help="print only the command's output")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    try:
        if args.build:
            print(build_rig(rebuild=args.rebuild, log=lambda m: print(m, file=sys.stderr)))
            return 0
        if not cmd:
            p.error("no command given")
        echo = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
        script = cmd[0] if len(cmd) == 1 else cmd
        res = run_in_rig(script, args.timeout, memory=args.memory, rebuild=args.rebuild, echo=echo)
    except (RigBuildError, RigError) as e:
        print(f"rig: {e}", file=sys.stderr)
        return 3
    sys.stdout.write(res.output)
    sys.stdout.flush()
    ready = f"{res.ready_time:.1f}" if res.ready_time is not None else "?"
    print(f"rig: rc={res.rc} wall={res.wall_time:.1f}s ready(kvm_amd)={ready}s", file=sys.stderr)
    return res.rc


if __name__ == "__main__":
    sys.exit(main())
