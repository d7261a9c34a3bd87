"""Decompressing a real kernel: pvhboot's bounded decoders against each codec's own tool.

The cached Debian cloud vmlinux (53 MB) is compressed once per codec the way the kernel build does
it (scripts/Makefile.lib; zstd at -19 with the -22 window, 2^27, to keep the build short) into
.cache/bench/codecs/.  For each codec a child decompresses it with
:func:`pvhboot.image.decompress.decompress_payload` and reports wall time and the growth of its peak
RSS (ru_maxrss after minus before); the peer is the codec's own tool decompressing to /dev/null.

Rows: pvhboot's time / the tool's time, and pvhboot's peak RSS growth / the output size (the
promise is one output-sized buffer, plus the codec's own window for lzma, xz and zstd).

    python3 -m bench.decompress [--repeats 3]
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from . import common

MiB = 1 << 20
# codec -> (compress argv, decompress argv of the peer tool); both read a file / stdin.
CODECS = {
    "gzip": (["gzip", "-n", "-9", "-c"], ["gzip", "-d", "-c"]),
    "bzip2": (["bzip2", "-9", "-c"], ["bzip2", "-d", "-c"]),
    "lzma": (["lzma", "-9", "-c"], ["lzma", "-d", "-c"]),
    "xz": (["xz", "--check=crc32", "--x86", "--lzma2=,dict=32MiB", "-c"], ["xz", "-d", "-c"]),
    "lz4": (["lz4", "-l", "-9", "-c"], ["lz4", "-d", "-c"]),
    "zstd": (["zstd", "-q", "-19", "--zstd=wlog=27", "-c"], ["zstd", "-q", "-d", "-c"]),
}

# Peak RSS growth / output.  One output buffer plus the pieces in flight (4 MiB from a decoder,
# 8 MiB lz4 blocks) for gzip, bzip2 and lz4; the codec's own window (lzma/xz dictionary, zstd
# window, each touched up to the output's size) on top of that for the others.
ONE_BUFFER_GOAL, WINDOWED_GOAL = 1.5, 2.25
WINDOWED = ("lzma", "xz", "zstd")

_CHILD = r"""
import json, resource, sys, time
import lz4.block, zstandard
from pvhboot.image.decompress import decompress_payload
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
out = decompress_payload(data)
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "grew": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024,
                  "size": len(out)}))
"""


def vmlinux_path():
    bz = next(iter(sorted((common.REPO / ".cache" / "debian-kernel" / "current" / "boot").glob("vmlinuz-*"))), None)
    vm = common.REPO / ".cache" / "debian-kernel" / (bz.name + ".vmlinux") if bz else None
    return vm if vm and vm.exists() else None


def payload(codec: str, vmlinux) -> tuple:
    """(compressed file, payload file = compressed + size trailer), built once."""
    out = common.CACHE / "codecs"
    out.mkdir(parents=True, exist_ok=True)
    comp, pay = out / f"vmlinux.{codec}", out / f"vmlinux.{codec}.payload"
    if not pay.exists():
        with open(vmlinux, "rb") as src, open(comp, "wb") as dst:
            subprocess.run(CODECS[codec][0], stdin=src, stdout=dst, check=True)
        size = vmlinux.stat().st_size
        pay.write_bytes(comp.read_bytes() + size.to_bytes(4, "little"))
    return comp, pay


def measure(repeats: int) -> dict:
    vmlinux = vmlinux_path()
    if vmlinux is None:
        return {"rows": [common.row("dz", "decompress a real kernel", "", None, status="not run")],
                "notes": ["no cached Debian vmlinux (make test fetches it)"]}
    rows, details = [], {}
    for codec, (_, peer) in CODECS.items():
        if not shutil.which(peer[0]):
            rows.append(common.row(f"dz-{codec}", f"decompress vmlinux, {codec}", "s", None, status="not run"))
            continue
        comp, pay = payload(codec, vmlinux)
        ours, theirs = [], []
        for _ in range(repeats):  # interleaved, so a busy moment hits both
            p = subprocess.run([sys.executable, "-c", _CHILD, str(pay)], capture_output=True, text=True,
                               env=dict(os.environ, PYTHONPATH=str(common.REPO / "src")), check=True)
            ours.append(json.loads(p.stdout.strip().splitlines()[-1]))
            theirs.append(common.run_process([*peer, str(comp)], stdout_path="/dev/null"))
        size = ours[0]["size"]
        t_ours = common.median(r["seconds"] for r in ours)
        t_peer = common.median(r.wall_s for r in theirs)
        grew = common.median(r["grew"] for r in ours)
        rows.append(common.row(f"dz-{codec}", f"decompress the 53 MB vmlinux, {codec} (wall)", "s", t_ours,
                               t_peer, f"{peer[0]} -d to /dev/null"))
        rows.append(common.row(f"dm-{codec}", f"  peak RSS growth while decompressing, {codec}", "MiB",
                               grew / MiB, size / MiB, "the output itself",
                               goal=WINDOWED_GOAL if codec in WINDOWED else ONE_BUFFER_GOAL))
        details[codec] = {"ours": ours, "peer_wall": [r.wall_s for r in theirs], "compressed": comp.stat().st_size}
    return {"rows": rows, "notes": ["peak RSS growth / output: 1.0 is one output buffer; lzma, xz and zstd add "
                                    "their dictionary/window (touched up to min(window, output))"],
            "details": details}


main = common.repeats_main("decompress", measure, repeats=3)


if __name__ == "__main__":
    raise SystemExit(main())
