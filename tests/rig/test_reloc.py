"""Real Linux moved by pvhboot: Debian's 6.12 cloud kernel (its vmlinux carries the Xen
PHYS32_RELOC note: 2 MiB alignment, window [16 MiB, 1 GiB - 1]) booted the PVH way at addresses
other than its link address (16 MiB), with 1 and 2 vCPUs and with --kaslr=SEED, in one rig run.

Each inner guest prints where Linux's "Kernel code" is in /proc/iomem, the _text symbol's virtual
address, /sys/kernel/boot_params/data and a marker from user space, then powers off.  The host
checks that the kernel runs where pvhboot put it, that boot_params are what pvhboot predicts from
the same plan (pvhboot.boot.convert.start_info_to_boot_params), and that user space ran.  With
--kaslr pvhboot also applies the relocation table the bzImage payload carries after the ELF, so
_text moves by the plan's virtual offset (the decompressor's KASLR, done by the loader).

Needs the 6.12 kernel: scripts/fetch-debian-kernel-6.12.sh (run by scripts/setup-tests.sh).
"""
from __future__ import annotations

import ctypes
import io
import json
import re
import time
from pathlib import Path

import pytest
from rigrun import INNER_RETRIES, run_or_fail, time_limit  # tests/rig/ is on sys.path

# The inner results are read as the real-Linux tests read theirs (tests/rig/ is on sys.path).
from test_real_linux import _case, _describe, _value  # noqa: E402

from pvhboot.commands.run import write_run_initramfs
from pvhboot.rig.build import CACHE_DIR, REPO_ROOT

RIG_TIMEOUT_S = 420
pytestmark = [pytest.mark.rig, pytest.mark.usefixtures("rig_available"), time_limit(RIG_TIMEOUT_S)]

HERE = Path(__file__).resolve().parent
KERNEL_DIR = REPO_ROOT / ".cache" / "debian-kernel-6.12" / "current" / "boot"
MEMORY = 256 << 20
LINK = 0x1000000  # the 6.12 vmlinux's first PT_LOAD paddr (LOAD_PHYSICAL_ADDR)
LINK_TEXT = 0xFFFFFFFF81000000  # its _text: __START_KERNEL_map + LINK
CMDLINE = "console=ttyS0 quiet panic=-1 reboot=t"
KASLR_SEED = 2026
CHECK_SH = r"""#!/bin/sh
echo GUEST-MARKER-UP
echo "CPUS-ONLINE=$(cat /sys/devices/system/cpu/online)"
echo "KERNEL-CODE=$(grep -m1 'Kernel code' /proc/iomem | cut -d- -f1 | tr -d ' ')"
echo "TEXT=$(grep -m1 ' _text$' /proc/kallsyms | cut -d' ' -f1)"
early='pvh_start_xen|xen_prepare_pvh|init_pvh_bootparams|e820__update_table|startup_64|__startup_64'
sort /proc/kallsyms | grep -A1 -E " ($early)\$" | sed 's/^/KSYM /'
echo "BP=$(od -An -tx1 -v /sys/kernel/boot_params/data | tr -d ' \n')"
"""
# (name, vCPUs, placement options): two explicit addresses other than 16 MiB, and a replayable random one.
CASES = [("reloc-64m", 1, ["--load-addr", "0x4000000"]),
         ("reloc-160m", 2, ["--load-addr", "0xa000000"]),
         ("kaslr", 2, [f"--kaslr={KASLR_SEED}"])]


@pytest.fixture(scope="module")
def bzimage() -> Path:
    found = sorted(KERNEL_DIR.glob("vmlinuz-6.12.*")) if KERNEL_DIR.is_dir() else []
    if not found:
        pytest.skip(f"rig: no Debian 6.12 cloud kernel in {KERNEL_DIR} (run scripts/fetch-debian-kernel-6.12.sh)")
    return found[-1]


@pytest.fixture(scope="module")
def check_cpio(tmp_path_factory) -> bytes:
    """The inner guests' initramfs: busybox and /root/check.sh as the command (`pvhboot run`'s)."""
    script = tmp_path_factory.mktemp("reloc") / "check.sh"
    script.write_text(CHECK_SH)
    script.chmod(0o755)
    buf = io.BytesIO()
    write_run_initramfs(buf, ["sh", "/root/check.sh"], files=[(str(script), "root/check.sh")])
    return buf.getvalue()


@pytest.fixture(scope="module")
def inner(bzimage, check_cpio) -> dict:
    cases = [{"name": name, "timeout": 150, "marks": ["GUEST-MARKER-UP", "PVHBOOT-EXIT"], "retries": INNER_RETRIES,
              "argv": ["pvhboot", "boot", "/tmp/vmlinux-6.12", "--protocol", "pvh", "--initrd",
                       "/rig/work/check.cpio", "--cmdline", CMDLINE, "--memory", f"{MEMORY >> 20}M",
                       "--cpus", str(cpus), "--timeout", "90", *opts]}
             for name, cpus, opts in CASES]
    # The bzImage travels in the per-run archive (11 MB, unpacked into the rig's RAM: -m 3G).
    files = {"rig/work/vmlinuz-6.12": bzimage.read_bytes(), "rig/work/check.cpio": check_cpio,
             "rig/work/cases.json": json.dumps(cases).encode(),
             "rig/work/inner_checks.py": (HERE / "inner_checks.py").read_bytes()}
    script = ("pvhboot inspect --json /rig/work/vmlinuz-6.12 > /tmp/inspect.json || exit 90\n"
              "python3 -c 'import json; print(\"INSPECT-RELOC=\" + json.dumps(json.load(open(\"/tmp/inspect.json\"))"
              "[\"phys32_reloc\"]))'\n"
              "pvhboot extract /rig/work/vmlinuz-6.12 -o /tmp/vmlinux-6.12 || exit 91\n"
              "python3 /rig/work/inner_checks.py /rig/work/cases.json\n")
    start = time.monotonic()
    res = run_or_fail(script, timeout=RIG_TIMEOUT_S, files=files)
    results = {"_output": res.output}
    for line in res.output.splitlines():
        if line.startswith("INNER-RESULT "):
            r = json.loads(line[len("INNER-RESULT "):])
            results[r["name"]] = r
    timings = {"rig_wall_s": round(time.monotonic() - start, 1),
               "inner": {n: r["wall"] for n, r in results.items() if n != "_output"}}
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    (CACHE_DIR / "last-reloc-results.json").write_text(json.dumps(results, indent=2))
    print("\nrig timings:", json.dumps(timings))
    assert res.rc == 0, f"inner script failed rc={res.rc}:\n{res.output[-3000:]}"
    return results


def _plan(bzimage: Path, cpus: int, opts: list[str], initrd_bytes: bytes, tmp: Path):
    """The plan the inner `pvhboot boot` made, made again on the host from the same inputs."""
    from pvhboot.boot import BootConfig, plan_guest
    from pvhboot.image import load_kernel

    initrd = tmp / "check.cpio"
    initrd.write_bytes(initrd_bytes)
    load_addr = int(opts[1], 0) if opts[0] == "--load-addr" else None
    seed = int(opts[0].split("=", 1)[1]) if opts[0].startswith("--kaslr=") else None
    config = BootConfig(memory=MEMORY, cpus=cpus, cmdline=CMDLINE, initrd=str(initrd), protocol="pvh",
                        load_addr=load_addr, kaslr_seed=seed)
    return plan_guest(load_kernel(str(bzimage)), config)


def test_inspect_shows_the_window(inner):
    m = re.search(r"^INSPECT-RELOC=(.*)$", inner["_output"], re.M)
    assert m, inner["_output"][-2000:]
    assert json.loads(m.group(1)) == {"align": 0x200000, "min": 0x1000000, "max": 0x3FFFFFFF}


@pytest.mark.parametrize("name,cpus,opts", CASES, ids=[c[0] for c in CASES])
def test_linux_runs_where_pvhboot_put_it(inner, bzimage, check_cpio, tmp_path, name, cpus, opts):
    from pvhboot.abi.bootparam import boot_params
    from pvhboot.boot import Blob
    from pvhboot.boot.convert import start_info_to_boot_params
    from pvhboot.memory import GuestMemory

    r = _case(inner, name)
    assert "GUEST-MARKER-UP" in r["stdout"] and "PVHBOOT-EXIT=0" in r["stdout"], _describe(r)  # user space ran
    assert r["rc"] == 0, _describe(r)
    plan = _plan(bzimage, cpus, opts, check_cpio, tmp_path)
    load = plan.kernel_placement.load_addr
    assert load != LINK and load % 0x200000 == 0
    assert f"kernel loaded at {load:#x}" in r["stderr"], _describe(r)
    # Linux's own account of where its code is (kernel/resource.c, "Kernel code" = _text's physical address)
    assert int(_value(r, "KERNEL-CODE"), 16) == load, _describe(r)
    assert _value(r, "CPUS-ONLINE") == ("0" if cpus == 1 else f"0-{cpus - 1}")
    # The virtual base: moved by --kaslr (the relocation table applied), else the link-time one.
    text = int(_value(r, "TEXT"), 16)
    assert text == LINK_TEXT + plan.kernel_placement.virt_offset, _describe(r)
    print(f"{name}: Kernel code at {load:#x}, _text at {text:#x}")
    if plan.kernel_placement.virt_offset:
        _report_prelude_sites(r, plan)
    # boot_params: what Linux built from start_info equals what pvhboot predicts from its plan
    raw = bytes.fromhex(_value(r, "BP"))
    assert len(raw) == ctypes.sizeof(boot_params)
    seen = boot_params.from_buffer_copy(raw)
    with GuestMemory(list(plan.ram_ranges)) as mem:
        from pvhboot.boot import load_guest

        load_guest(plan, mem)
        si = plan.find(Blob.START_INFO)
        want = start_info_to_boot_params(mem.read(si.addr, si.size), mem.read)

    def fields(bp):
        e820 = [(bp.e820_table[i].addr, bp.e820_table[i].size, bp.e820_table[i].type)
                for i in range(bp.e820_entries)]
        h = bp.hdr
        return {"e820": e820, "acpi_rsdp_addr": bp.acpi_rsdp_addr, "cmd_line_ptr": h.cmd_line_ptr,
                "ramdisk": (h.ramdisk_image, h.ramdisk_size), "version": h.version,
                "type_of_loader": h.type_of_loader, "hardware_subarch": h.hardware_subarch}

    assert fields(seen) == fields(want)


def _report_prelude_sites(r, plan) -> None:
    """Evidence for the virtual shift under PVH: how many relocation sites lie in the code that runs
    before __startup_64 installs the relocated kernel mapping (pvh_start_xen, xen_prepare_pvh,
    init_pvh_bootparams, e820__update_table), from the guest's /proc/kallsyms (each symbol and the
    next one bound a function)."""
    lines = [ln.split() for ln in r["stdout"].splitlines() if ln.startswith("KSYM ")]
    syms = [(int(a, 16), n) for _, a, _, n in (ln[:4] for ln in lines if len(ln) >= 4)]
    relocs = plan.kernel_placement.relocations
    virt = relocs.virt_base + plan.kernel_placement.virt_offset  # where physical 0 is mapped now
    sites = sorted(relocs.rel32 + relocs.inv32 + relocs.rel64)
    for (start, name), (end, _) in zip(syms, syms[1:]):
        if name in ("pvh_start_xen", "xen_prepare_pvh", "init_pvh_bootparams", "e820__update_table",
                    "startup_64", "__startup_64"):
            lo, hi = start - virt, end - virt
            inside = [s for s in sites if lo <= s < hi]
            print(f"  {name}: {hi - lo:#x} bytes, {len(inside)} relocation site(s)")
