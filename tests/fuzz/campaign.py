"""Mutation-fuzzing campaign for the kernel-image parsers: mutated images through inspect/plan/extract.

    python3 tests/fuzz/campaign.py --count 100000 [--workers 2] [--seed 1] [--cli-every 500]
    python3 tests/fuzz/campaign.py --replay 1234 -o case.img     # write case 1234's image

Every case is one mutated image (from the seeds below) run in a worker process through
``pvhboot inspect``, ``plan`` (random --memory/--protocol/--cpus; both with --json in three cases
of four, rich tables in the fourth) and ``extract`` by calling the
real entry point, :func:`pvhboot.cli.main`, in-process; every ``--cli-every``-th case also runs the
three commands as real ``python -m pvhboot`` children.  Workers run under RLIMIT_AS
(``--as-limit``) and nice; each command of a case gets ``--timeout`` seconds of CPU time (the
machine is shared: a niced worker can wait for a CPU far longer than it runs) and ``--wall`` seconds
of wall time (a case blocked without spinning).

A case is
- a crash: an exception escapes ``main`` (anything that is not pvhboot's own error), an exit status
  other than 0/2, an exit 2 that is not exactly one ``pvhboot: error:`` line, a traceback on a CLI
  child's stderr, or a worker that dies;
- a hang: a case past its CPU or wall budget (the worker is killed and replaced), or a CLI child
  past either (RLIMIT_CPU, subprocess timeout);
- a memory blow-up: MemoryError, or the worker's peak RSS passing ``--rss-limit`` during the case
  (the worker is then replaced, so the next case is measured from a fresh start).

The summary line is ``fuzz: N cases, C crashes, H hangs, B blowups, ... peak RSS X MiB, T s``; every
finding is listed with its case number, which ``--replay`` turns back into the image.

Seeds: the probe ELF (src/pvhboot/probe/probe.elf), synthetic ELFs (64/32-bit, Xen notes, symbols)
and bzImages in every codec from tests/imagekit.py, the Debian bzImage's real setup area grafted on a
small payload, decompression bombs (zeros in every codec, trailers claiming less than they expand
to; the payload magic rewrite turns them into the other codecs' headers), and the Debian cloud
bzImage and vmlinux when cached (.cache/debian-kernel).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import pickle
import random
import resource
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
ROOT = TESTS.parent
for p in (str(ROOT / "src"), str(TESTS)):
    if p not in sys.path:
        sys.path.insert(0, p)

import imagekit  # noqa: E402

from pvhboot.abi.bootparam import SETUP_HEADER_OFFSET, setup_header  # noqa: E402

DEBIAN = ROOT / ".cache" / "debian-kernel"
MiB = 1 << 20

# Values that sit on the edges parsers get wrong (sizes, offsets, counts, signs).
INTERESTING = (0, 1, 2, 3, 4, 7, 8, 0x10, 0x20, 0x40, 0x7F, 0x80, 0xFF, 0x100, 0x200, 0x1000, 0x7FFF, 0x8000,
               0xFFFF, 0x10000, 0x100000, 0x1000000, 0x3FFFFFFF, 0x40000000, 0x7FFFFFFF, 0x80000000,
               0xFFFFFFFF, 0x100000000, 0x7FFFFFFFFFFFFFFF, 0x8000000000000000, 0xFFFFFFFFFFFFFFFF)
CODEC_MAGICS = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x89LZO", b"\x02\x21\x4c\x18", b"\x28\xb5\x2f\xfd",
                b"\x5d\x00\x00")


# ---- seeds -------------------------------------------------------------------------------------

@dataclass
class Seed:
    name: str
    data: bytes
    weight: float
    regions: list[tuple[int, int]] = field(default_factory=list)  # byte ranges worth aiming at
    fields: list[tuple[int, int]] = field(default_factory=list)  # (offset, size) of header fields
    payload: tuple[int, int] | None = None  # bzImage payload bytes (start, end), trailer included


def _elf_targets(data: bytes) -> tuple[list, list]:
    """ELF header fields, the program header table and the PT_NOTE contents."""
    is64 = data[4] == 2
    ehdr = [(16, 2), (18, 2), (24, 8), (32, 8), (40, 8), (52, 2), (54, 2), (56, 2), (58, 2), (60, 2), (62, 2)] \
        if is64 else [(16, 2), (18, 2), (24, 4), (28, 4), (32, 4), (40, 2), (42, 2), (44, 2), (46, 2), (48, 2),
                      (50, 2)]
    if is64:
        phoff, phentsize, phnum = struct.unpack_from("<QHH", data, 32)[0], *struct.unpack_from("<HH", data, 54)
        phfields = [(0, 4), (4, 4), (8, 8), (16, 8), (24, 8), (32, 8), (40, 8), (48, 8)]
    else:
        phoff, phentsize, phnum = struct.unpack_from("<I", data, 28)[0], *struct.unpack_from("<HH", data, 42)
        phfields = [(0, 4), (4, 4), (8, 4), (12, 4), (16, 4), (20, 4), (24, 4), (28, 4)]
    fields, regions = list(ehdr), [(0, 64), (phoff, phoff + phnum * phentsize)]
    for i in range(phnum):
        at = phoff + i * phentsize
        fields += [(at + o, s) for o, s in phfields]
        ptype = struct.unpack_from("<I", data, at)[0]
        if ptype == 4:  # PT_NOTE: every note's namesz/descsz/type, and the whole segment
            off, size = (struct.unpack_from("<QQ", data, at + 8)[0], struct.unpack_from("<Q", data, at + 32)[0]) \
                if is64 else (struct.unpack_from("<I", data, at + 4)[0], struct.unpack_from("<I", data, at + 16)[0])
            regions.append((off, off + size))
            pos = off
            while pos + 12 <= off + size:
                namesz, descsz, _ = struct.unpack_from("<III", data, pos)
                fields += [(pos, 4), (pos + 4, 4), (pos + 8, 4)]
                regions.append((pos + 12 + ((namesz + 3) & ~3), pos + 12 + ((namesz + 3) & ~3) + descsz))
                pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return fields, [(a, b) for a, b in regions if 0 <= a < b <= len(data)]


def _bz_seed(name: str, data: bytes, weight: float) -> Seed:
    fields = [(SETUP_HEADER_OFFSET + getattr(setup_header, f).offset, getattr(setup_header, f).size)
              for f, _ in setup_header._fields_]
    setup_size = ((data[0x1F1] or 4) + 1) * 512
    hdr = setup_header.from_buffer_copy(data[SETUP_HEADER_OFFSET:SETUP_HEADER_OFFSET + 123])
    start = setup_size + hdr.payload_offset
    end = start + hdr.payload_length
    fields += [(end - 4, 4), (start, 4), (start + 4, 4), (start + 8, 4)]  # size trailer, codec header
    return Seed(name, data, weight, regions=[(0x1F1, 0x280), (start, min(end, start + 64))], fields=fields,
                payload=(start, end))


def debian_files() -> tuple[Path | None, Path | None]:
    boot = DEBIAN / "current" / "boot"
    bz = next(iter(sorted(boot.glob("vmlinuz-*"))), None) if boot.is_dir() else None
    vm = DEBIAN / (bz.name + ".vmlinux") if bz else None
    return bz, vm if vm and vm.exists() else None


@functools.cache
def seeds(small_only: bool = False) -> tuple[Seed, ...]:
    from pvhboot.probe import probe_path

    out: list[Seed] = []

    def elf(name, data, weight):
        f, r = _elf_targets(data)
        out.append(Seed(name, data, weight, regions=r, fields=f))

    elf("probe", probe_path().read_bytes(), 12)
    elf("elf64", imagekit.build_elf(symbols=[("startup_64", 0xFFFFFFFF81000000, 0x40, imagekit.STT_FUNC)]), 8)
    elf("elf32", imagekit.build_elf(elf_class=32, vaddr=0xC1000000), 5)
    elf("elf64-phys32-only", imagekit.build_elf(notes=[("Xen", 18, struct.pack("<I", 0x1000000))]), 3)
    for codec in imagekit.CODECS:
        out.append(_bz_seed(f"bzimage-{codec}", imagekit.build_bzimage(imagekit.build_elf(), codec=codec), 5))
    # Decompression bombs: zeros (1 GiB for zstd, 48 MiB for the slower codecs) under a trailer
    # claiming 16 MiB; the trailer and header mutations then move the claim around.
    for codec in imagekit.CODECS:
        size = (1 << 30) if codec == "zstd" else 48 * MiB
        payload = imagekit.with_size(imagekit.zeros_compressed(codec, size), 16 * MiB)
        out.append(_bz_seed(f"bomb-{codec}", imagekit.build_bzimage(payload=payload), 1.5))
    bz, vm = debian_files()
    if bz is not None:
        real = bz.read_bytes()
        out.append(_bz_seed("debian-setup-hybrid", imagekit.graft_setup(real), 10))
        if not small_only:
            out.append(_bz_seed("debian-bzimage", real, 1.5))
    if vm is not None and not small_only:
        data = vm.read_bytes()
        f, r = _elf_targets(data)
        out.append(Seed("debian-vmlinux", data, 1, regions=r, fields=f))
    return tuple(out)


# ---- mutations ---------------------------------------------------------------------------------

def mutate(seed: Seed, rng: random.Random) -> tuple[bytes, list[str]]:
    """1-8 mutations aimed at headers, notes, the setup header, payload codec bytes and the trailer."""
    data = bytearray(seed.data)
    log: list[str] = []
    for _ in range(rng.choice((1, 1, 2, 2, 3, 4, 8))):
        n = len(data)
        if n == 0:
            break
        op = rng.random()
        if op < 0.30 and seed.fields:  # a header field <- an interesting value (or +-1 of it)
            at, size = rng.choice(seed.fields)
            value = (rng.choice(INTERESTING) + rng.choice((0, 0, 0, 1, -1))) % (1 << (8 * size))
            if at + size <= n:
                data[at:at + size] = value.to_bytes(size, "little")
                log.append(f"field@{at:#x}/{size}={value:#x}")
        elif op < 0.55:  # random bytes in a region of interest (or anywhere)
            lo, hi = rng.choice(seed.regions) if seed.regions and rng.random() < 0.8 else (0, n)
            hi = min(hi, n)
            if lo < hi:
                for _ in range(rng.randint(1, 4)):
                    at = rng.randrange(lo, hi)
                    data[at] = rng.randrange(256)
                log.append(f"bytes@{lo:#x}..{hi:#x}")
        elif op < 0.65 and seed.payload:  # payload codec bytes, or another codec's magic
            start, end = seed.payload
            if rng.random() < 0.5 and start + 6 <= n:
                magic = rng.choice(CODEC_MAGICS)
                data[start:start + len(magic)] = magic
                log.append(f"magic={magic.hex()}")
            elif start < min(end, n):
                at = rng.randrange(start, min(end, n))
                data[at] = rng.randrange(256)
                log.append(f"payload@{at:#x}")
        elif op < 0.72 and seed.payload:  # the size trailer claims something else
            end = seed.payload[1]
            if end <= n:
                value = rng.choice((0, 1, 16 * MiB, 1 << 30, (1 << 30) + 1, 0xFFFFFFFF, rng.randrange(1 << 32)))
                data[end - 4:end] = value.to_bytes(4, "little")
                log.append(f"trailer={value:#x}")
        elif op < 0.80:  # a bit flip anywhere
            at = rng.randrange(n)
            data[at] ^= 1 << rng.randrange(8)
            log.append(f"flip@{at:#x}")
        elif op < 0.87:  # truncation
            cut = rng.randrange(n)
            del data[cut:]
            log.append(f"cut@{cut:#x}")
        elif op < 0.94:  # delete or duplicate a chunk (shifts every later offset)
            at = rng.randrange(n)
            size = rng.randint(1, min(4096, n - at))
            if rng.random() < 0.5:
                del data[at:at + size]
                log.append(f"del@{at:#x}+{size}")
            else:
                data[at:at] = data[at:at + size]
                log.append(f"dup@{at:#x}+{size}")
        else:  # a run of 0x00 / 0xff over a field or region start
            at = rng.randrange(n)
            size = rng.randint(1, 64)
            data[at:at + size] = bytes([rng.choice((0, 0xFF))]) * len(data[at:at + size])
            log.append(f"fill@{at:#x}+{size}")
    return bytes(data), log


def make_case(index: int, campaign_seed: int, pool: tuple[Seed, ...]) -> tuple[Seed, bytes, list[str], list[str]]:
    """Case ``index``: its seed, image, mutation log and plan options (deterministic)."""
    rng = random.Random(f"{campaign_seed}:{index}")
    seed = rng.choices(pool, weights=[s.weight for s in pool])[0]
    data, log = mutate(seed, rng)
    plan_opts = ["--memory", rng.choice(("16M", "128M", "512M", "6G")),
                 "--protocol", rng.choice(("auto", "auto", "pvh", "linux32", "linux64")),
                 "--cpus", rng.choice(("1", "2", "64"))]
    # Human (rich) output for one case in four: it is where image text meets markup, and it costs
    # more than the parsing itself.
    human = rng.random() < 0.25
    return seed, data, log, plan_opts + ([] if human else ["--json"])


# ---- running a case ------------------------------------------------------------------------------

COMMANDS_PER_CASE = 3


def _commands(path: str, out: str, opts: list[str]) -> list[list[str]]:
    """inspect and plan (human or --json, as the case says), extract."""
    json_opt = ["--json"] if "--json" in opts else []
    return [["inspect", *json_opt, path], ["plan", path, *opts], ["extract", path, "-o", out]]


def _check_exit(argv, rc: int, stderr: str) -> str | None:
    """None when the outcome keeps pvhboot's promise, else what broke it."""
    if rc == 0:
        return None
    if rc != 2:
        return f"{argv[0]}: exit {rc}: {stderr.strip()[-300:]}"
    lines = stderr.splitlines()
    if len(lines) != 1 or not lines[0].startswith("pvhboot: error: "):
        return f"{argv[0]}: exit 2 without exactly one 'pvhboot: error:' line: {stderr.strip()[-300:]!r}"
    return None


def run_in_process(path: str, out: str, plan_opts: list[str]) -> tuple[str | None, int]:
    """(what broke pvhboot's promise or None, how many of the commands exited 0)."""
    from pvhboot.cli import main

    ok = 0
    for argv in _commands(path, out, plan_opts):
        stdout, stderr = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                rc = main(argv)
        except MemoryError:
            raise
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException as e:  # noqa: BLE001 -- this is what the campaign looks for
            import traceback

            tb = traceback.extract_tb(e.__traceback__)[-1]
            return f"{argv[0]}: {type(e).__name__}: {str(e)[:200]} at {tb.filename}:{tb.lineno}", ok
        problem = _check_exit(argv, rc, stderr.getvalue())
        if problem:
            return problem, ok
        ok += rc == 0
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out)
    return None, ok


def _limit_child(as_limit: int, cpu: float) -> None:
    os.nice(10)
    resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))
    resource.setrlimit(resource.RLIMIT_CPU, (int(cpu) + 1, int(cpu) + 2))  # SIGXCPU past the budget


def run_cli_children(path: str, out: str, plan_opts: list[str], as_limit: int, timeout: float,
                     wall: float) -> tuple[str | None, str]:
    """(what broke pvhboot's promise or None, "hang" or "crash")."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    for argv in _commands(path, out, plan_opts):
        try:
            proc = subprocess.run([sys.executable, "-m", "pvhboot", *argv], capture_output=True, text=True,
                                  errors="replace", env=env, timeout=wall,
                                  preexec_fn=lambda: _limit_child(as_limit, timeout))
        except subprocess.TimeoutExpired:
            return f"cli {argv[0]}: no exit in {wall} s", "hang"
        if proc.returncode == -signal.SIGXCPU:
            return f"cli {argv[0]}: over {timeout} s of CPU", "hang"
        if "Traceback" in proc.stderr:
            return f"cli {argv[0]}: traceback: {proc.stderr.strip()[-300:]}", "crash"
        problem = _check_exit(argv, proc.returncode, proc.stderr)
        if problem:
            return "cli " + problem, "crash"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out)
    return None, "crash"


def worker(seeds_file: str, campaign_seed: int, as_limit: int, timeout: float, wall: float,
           stall_case: int = -1, spin_case: int = -1) -> None:
    """Read case numbers on stdin, answer one JSON line each: {"i", "problem", "kind", "maxrss", ...}."""
    with open(seeds_file, "rb") as f:
        pool = pickle.load(f)  # built once by the campaign: a replaced worker starts in a fraction of a second
    import pvhboot.cli

    # main() builds its argparse parser on every call (~3 ms, a third of a small case); one is enough.
    pvhboot.cli.build_parser = functools.cache(pvhboot.cli.build_parser)

    resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))
    workdir = tempfile.mkdtemp(prefix="pvhboot-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    path, out = os.path.join(workdir, "image"), os.path.join(workdir, "out")
    print("ready", flush=True)  # seeds built: case timing starts from here, not from the spawn
    try:
        for line in sys.stdin:
            index, cli = (int(x) for x in line.split())
            if index == stall_case:  # the campaign's own tests: a case blocked for ever,
                time.sleep(3600)
            while index == spin_case:  # and one computing for ever
                pass
            seed, data, log, plan_opts = make_case(index, campaign_seed, pool)
            with open(path, "wb") as f:
                f.write(data)
            del data
            kind, started = "crash", time.perf_counter()
            try:
                problem, ok = run_in_process(path, out, plan_opts)
                if problem is None and cli:
                    problem, kind = run_cli_children(path, out, plan_opts, as_limit, timeout, wall)
            except MemoryError as e:
                problem, kind, ok = f"MemoryError {e}", "blowup", 0
            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            print(json.dumps({"i": index, "seed": seed.name, "problem": problem, "kind": kind, "ok": ok,
                              "mutations": log if problem else None, "maxrss": maxrss,
                              "seconds": time.perf_counter() - started}), flush=True)
    finally:
        for name in (path, out):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        os.rmdir(workdir)


# ---- the campaign --------------------------------------------------------------------------------

@dataclass
class Summary:
    cases: int = 0
    crashes: list = field(default_factory=list)
    hangs: list = field(default_factory=list)
    blowups: list = field(default_factory=list)
    cli_cases: int = 0
    peak_rss: int = 0
    seconds: float = 0.0
    by_seed: dict = field(default_factory=dict)  # seed -> [cases, seconds]
    commands_ok: int = 0  # commands that exited 0 (the rest were refused with pvhboot's error)
    commands: int = 0

    def line(self) -> str:
        return (f"fuzz: {self.cases} cases ({self.cli_cases} also as CLI children), {len(self.crashes)} crashes, "
                f"{len(self.hangs)} hangs, {len(self.blowups)} blowups; {self.commands_ok} of {self.commands} "
                f"commands exited 0, the rest 2; peak RSS {self.peak_rss / MiB:.0f} MiB, {self.seconds:.0f} s")


class _Worker:
    def __init__(self, args_list: list[str]) -> None:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", *args_list],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                     preexec_fn=lambda: os.nice(10))
        self.case: int | None = None
        self.started = 0.0

    @property
    def fd(self) -> int:
        return self.proc.stdout.fileno()

    def cpu_seconds(self) -> float:
        """The worker's CPU time, its waited-for children (the CLI ones) included (proc(5) stat)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime

    def send(self, index: int, cli: bool) -> None:
        # CLI cases run the commands twice: in-process, then as children.
        self.budget = 1 + COMMANDS_PER_CASE if cli else 1
        self.case, self.started, self.cpu_started = index, time.monotonic(), self.cpu_seconds()
        self.proc.stdin.write(f"{index} {int(cli)}\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def run_campaign(count: int, *, campaign_seed: int = 1, workers: int = 1, start: int = 0, cli_every: int = 0,
                 timeout: float = 10.0, wall: float = 120.0, rss_limit: int = 768 * MiB, as_limit: int = 3 << 30,
                 small_only: bool = False, progress=None, stall_case: int = -1, spin_case: int = -1) -> Summary:
    with tempfile.NamedTemporaryFile(prefix="pvhboot-fuzz-seeds-", delete=False,
                                     dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as f:
        pickle.dump(seeds(small_only), f)
    try:
        return _run(f.name, count, campaign_seed, workers, start, cli_every, timeout, wall, rss_limit,
                    as_limit, progress, stall_case, spin_case)
    finally:
        os.unlink(f.name)


def _run(seeds_file, count, campaign_seed, workers, start, cli_every, timeout, wall, rss_limit, as_limit,
         progress, stall_case, spin_case) -> Summary:
    worker_args = ["--seeds-file", seeds_file, "--seed", str(campaign_seed), "--as-limit", str(as_limit),
                   "--timeout", str(timeout), "--wall", str(wall), "--stall-case", str(stall_case),
                   "--spin-case", str(spin_case)]
    summary = Summary()
    t0 = time.monotonic()
    todo = iter(range(start, start + count))
    pool = [_Worker(worker_args) for _ in range(max(1, workers))]
    starting = {w.fd: w for w in pool}  # building their seeds; a case is sent once they say "ready"
    idle: list[_Worker] = []
    busy: dict[int, _Worker] = {}

    def feed(w: _Worker) -> bool:
        index = next(todo, None)
        if index is None:
            return False
        cli = bool(cli_every) and index % cli_every == 0
        summary.cli_cases += cli
        w.send(index, cli)
        busy[w.fd] = w
        return True

    def replace(w: _Worker) -> None:
        w.kill()
        pool.remove(w)
        fresh = _Worker(worker_args)
        pool.append(fresh)
        starting[fresh.fd] = fresh

    try:
        while True:
            while idle:
                w = idle.pop()
                if not feed(w):
                    break
            if not busy and not starting:
                break
            ready, _, _ = select.select([*busy, *starting], [], [], 0.5)
            now = time.monotonic()
            for fd in ready:
                if fd in starting:
                    w = starting.pop(fd)
                    if w.proc.stdout.readline() != "ready\n":
                        raise RuntimeError(f"fuzz worker failed to start (exit {w.proc.wait()})")
                    idle.append(w)
                    continue
                w = busy.pop(fd)
                line = w.proc.stdout.readline()
                summary.cases += 1
                if not line:  # the worker died (a signal, or RLIMIT_AS hit outside Python's reach)
                    summary.crashes.append({"i": w.case, "problem": f"worker died: {w.proc.wait()}"})
                    replace(w)
                    continue
                r = json.loads(line)
                per_seed = summary.by_seed.setdefault(r["seed"], [0, 0.0])
                per_seed[0] += 1
                per_seed[1] += r["seconds"]
                summary.commands_ok += r["ok"]
                summary.commands += COMMANDS_PER_CASE
                summary.peak_rss = max(summary.peak_rss, r["maxrss"])
                if r["problem"]:
                    (summary.blowups if r["kind"] == "blowup" else summary.crashes).append(r)
                if r["maxrss"] > rss_limit:
                    if not r["problem"]:
                        summary.blowups.append({**r, "problem": f"peak RSS {r['maxrss'] / MiB:.0f} MiB"})
                    replace(w)  # measure the next case from a fresh worker
                elif r["problem"] and r["kind"] == "blowup":
                    replace(w)
                else:
                    idle.append(w)
                if progress and summary.cases % 1000 == 0:
                    progress(summary, time.monotonic() - t0)
            for fd, w in list(busy.items()):
                cpu, elapsed = w.cpu_seconds() - w.cpu_started, now - w.started
                if cpu > timeout * w.budget or elapsed > wall * w.budget:
                    busy.pop(fd)
                    summary.cases += 1
                    summary.hangs.append({"i": w.case, "problem": f"no answer after {cpu:.1f} s of CPU, "
                                                                  f"{elapsed:.1f} s of wall time"})
                    replace(w)
    finally:
        for w in pool:
            with contextlib.suppress(Exception):
                w.proc.stdin.close()
            w.kill()
    summary.seconds = time.monotonic() - t0
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--start", type=int, default=0, help="first case number")
    ap.add_argument("--seed", type=int, default=1, help="campaign seed (case i is the same for the same seed)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--cli-every", type=int, default=500, help="every Nth case also as CLI children (0: never)")
    ap.add_argument("--timeout", type=float, default=10.0, help="CPU seconds per command before it is a hang")
    ap.add_argument("--wall", type=float, default=120.0, help="wall seconds per command before it is a hang")
    ap.add_argument("--rss-limit", type=int, default=768, help="MiB of peak RSS past which a case is a blow-up")
    ap.add_argument("--as-limit", type=int, default=3 << 30, help="RLIMIT_AS of workers and CLI children (bytes)")
    ap.add_argument("--small-only", action="store_true", help="leave out the 14/53 MB Debian seeds")
    ap.add_argument("--json", metavar="FILE", help="write the summary and every finding as JSON")
    ap.add_argument("--replay", type=int, metavar="I", help="write case I's image to -o and print its mutations")
    ap.add_argument("-o", "--output", help="with --replay: where to write the image")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stall-case", type=int, default=-1, help=argparse.SUPPRESS)
    ap.add_argument("--spin-case", type=int, default=-1, help=argparse.SUPPRESS)
    ap.add_argument("--seeds-file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        with contextlib.suppress(BrokenPipeError):  # the parent went away: nothing to report to
            worker(args.seeds_file, args.seed, args.as_limit, args.timeout, args.wall, args.stall_case,
                   args.spin_case)
        return 0
    # A killed campaign takes its workers with it (run_campaign's finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.replay is not None:
        seed, data, log, plan_opts = make_case(args.replay, args.seed, seeds(args.small_only))
        if args.output:
            Path(args.output).write_bytes(data)
        print(json.dumps({"case": args.replay, "seed": seed.name, "mutations": log, "plan": plan_opts}))
        return 0

    def progress(s: Summary, elapsed: float) -> None:
        print(f"  {s.cases} cases, {elapsed:.0f} s: {len(s.crashes)} crashes, {len(s.hangs)} hangs, "
              f"{len(s.blowups)} blowups, peak RSS {s.peak_rss / MiB:.0f} MiB", file=sys.stderr, flush=True)

    s = run_campaign(args.count, campaign_seed=args.seed, workers=args.workers, start=args.start,
                     cli_every=args.cli_every, timeout=args.timeout, wall=args.wall, rss_limit=args.rss_limit * MiB,
                     as_limit=args.as_limit, small_only=args.small_only, progress=progress)
    for kind, found in (("crash", s.crashes), ("hang", s.hangs), ("blowup", s.blowups)):
        for r in found:
            print(f"{kind} case {r['i']} ({r.get('seed')}): {r['problem']} {r.get('mutations') or ''}")
    for name, (n, secs) in sorted(s.by_seed.items(), key=lambda kv: -kv[1][1]):
        print(f"  {name}: {n} cases, {1000 * secs / n:.0f} ms each")
    print(s.line())
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": s.line(), "seed": args.seed, "start": args.start,
                                               "count": args.count, "cases_by_seed": s.by_seed,
                                               "crashes": s.crashes, "hangs": s.hangs, "blowups": s.blowups,
                                               "peak_rss": s.peak_rss, "seconds": s.seconds}, indent=1))
    return 1 if s.crashes or s.hangs or s.blowups else 0


if __name__ == "__main__":
    sys.exit(main())
