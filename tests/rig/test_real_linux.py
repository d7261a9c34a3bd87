"""Real Linux (Debian's cloud kernel, nobody here wrote it) booted by pvhboot on a real KVM: the nested
rig (QEMU TCG + kvm_amd).  The inner boots come in GROUPS; each group runs in a rig boot of its own
(tests/rig/inner_checks.py), started the first time a test needs one of its cases, so an outer guest
that stops takes down one group, not the tier (and run_in_rig boots a stalled rig again first).

Inside each inner guest, /root/check.sh prints a marker, the CPUs online, /sys/kernel/boot_params/data
in hex and /proc/cmdline, reads a line from the console when asked, then `poweroff -f` (ACPI S5).
The boot_params seen by the guest are compared field by field with what pvhboot predicts on the host
from the same kernel, initrd, command line and memory: for PVH what Linux builds from the start_info
(pvhboot.boot.convert.start_info_to_boot_params), for linux64 the zero page the builder wrote.
"""
from __future__ import annotations

import ctypes
import io
import json
import os
import re
import tempfile
import time
import warnings
from pathlib import Path

import pytest
from inner_checks import first_trouble  # tests/rig/ is on sys.path
from rigrun import INNER_RETRIES, time_limit, warn_about_recoveries

from pvhboot.commands.run import write_run_initramfs
from pvhboot.rig import RigError, run_in_rig
from pvhboot.rig.build import CACHE_DIR
from pvhboot.rig.launch import CONSOLE_LOG

# Each outer boot of a group's rig is bounded by RIG_TIMEOUT_S; pytest's limit (rigrun.time_limit)
# sits above every boot run_in_rig may take, so a hang ends in the rig's diagnosis.  It holds a case
# that reaches its --timeout on every try (3 x ~95 s) beside the others (~8 s each).
RIG_TIMEOUT_S = 420
pytestmark = [pytest.mark.rig, pytest.mark.usefixtures("rig_available"), time_limit(RIG_TIMEOUT_S)]

HERE = Path(__file__).resolve().parent
MEMORY = 128 << 20
BASE_CMDLINE = "console=ttyS0 quiet panic=-1 reboot=t"
CHECK_SH = r"""#!/bin/sh
echo GUEST-MARKER-UP
echo "CPUS-ONLINE=$(cat /sys/devices/system/cpu/online)"
echo "NPROC=$(grep -c ^processor /proc/cpuinfo)"
echo "BP=$(od -An -tx1 -v /sys/kernel/boot_params/data | tr -d ' \n')"
echo "CMDLINE=$(cat /proc/cmdline)"
if grep -q want_input /proc/cmdline; then
    echo READY-FOR-INPUT
    read -r line
    echo "GOT-LINE=[$line]"
fi
"""
INPUT_LINE = "ping-from-the-host 42"


def _check_initrd() -> bytes:
    buf = io.BytesIO()
    with tempfile.NamedTemporaryFile("w", suffix=".sh") as script:
        script.write(CHECK_SH)
        script.flush()
        os.chmod(script.name, 0o755)
        write_run_initramfs(buf, ["sh", "/root/check.sh"], files=[(script.name, "root/check.sh")])
    return buf.getvalue()


RUN_BURST = 16 << 10


def _boot(name, kernel, protocol, cpus, cmdline, initrd="/rig/work/check.cpio", timeout=90,
          retries=INNER_RETRIES, **extra):
    argv = ["pvhboot", "boot", kernel, "--initrd", initrd, "--cmdline", cmdline,
            "--memory", f"{MEMORY >> 20}M", "--cpus", str(cpus), "--protocol", protocol,
            "--timeout", str(timeout), "--events-json", f"/tmp/{name}.json"]
    # retries: a triple fault or timeout boots the case again (inner_checks.py; a case that then
    # passes is flaky)
    return {"name": name, "argv": argv, "timeout": timeout + 60, "retries": retries,
            "marks": ["GUEST-MARKER-UP", "PVHBOOT-EXIT"], **extra}


CASES = [
    _boot("pvh", "/tmp/vmlinux", "pvh", 2, BASE_CMDLINE + " want_input",
          input_after="READY-FOR-INPUT", input=INPUT_LINE + "\n", pty=True),
    _boot("linux64", "/tmp/vmlinux", "linux64", 1, BASE_CMDLINE),
    _boot("linux64-bzimage", "/rig/guest/vmlinuz", "linux64", 1, BASE_CMDLINE),
    # The 32-bit boot protocol entry of the bzImage (code32_start, decompressor in protected mode).
    _boot("linux32-bzimage", "/rig/guest/vmlinuz", "linux32", 1, BASE_CMDLINE),
    # A missing init panics; panic=-1 reboot=t turns that into a triple fault -> crash report.
    _boot("panic-reboot", "/tmp/vmlinux", "pvh", 1, BASE_CMDLINE + " rdinit=/nonexistent",
          initrd="/rig/guest/hello.cpio", expect="Kernel panic"),
    # Without panic=, the kernel spins in panic(): --timeout stops it with a report.
    _boot("panic-timeout", "/tmp/vmlinux", "pvh", 1, "console=ttyS0 quiet rdinit=/nonexistent",
          initrd="/rig/guest/hello.cpio", timeout=15, expect="Kernel panic"),
    # The command ends with a burst (4x the tty's 4 KiB transmit buffer), so the buffer is full when
    # it exits: /init must not power off before the UART has sent it all (commands/run.py POWEROFF).
    {"name": "run", "timeout": 150, "marks": ["run-says-hi"], "retries": INNER_RETRIES,
     "argv": ["pvhboot", "run", "--cpus", "2", "--memory", "128M", "--timeout", "90", "--",
              "sh", "-c", f"echo run-says-hi; echo \"args=[$0]\"; head -c {RUN_BURST} /dev/zero | tr '\\0' x; "
              "echo; echo run-last-line; exit 7", "a b"]},
]


# Each group is one rig boot.  Entry paths together (the heart of the tier); failures and `run` apart.
GROUPS = {
    "entry-paths": ["pvh", "linux64", "linux64-bzimage", "linux32-bzimage"],
    "failures-and-run": ["panic-reboot", "panic-timeout", "run"],
}
assert sorted(n for g in GROUPS.values() for n in g) == sorted(c["name"] for c in CASES)
_RESULTS: dict[str, dict] = {}  # group -> {case name: result}, or {"__error__": message}


def _run_group(group: str) -> dict:
    cases = [c for c in CASES if c["name"] in GROUPS[group]]
    files = {"rig/work/check.cpio": _check_initrd(),
             "rig/work/cases.json": json.dumps(cases).encode(),
             "rig/work/inner_checks.py": (HERE / "inner_checks.py").read_bytes()}
    script = ("pvhboot extract /rig/guest/vmlinuz -o /tmp/vmlinux || exit 90\n"
              "python3 /rig/work/inner_checks.py /rig/work/cases.json\n")
    start = time.monotonic()
    try:
        # Each inner boot takes ~6-20 s; the rig's own limits end a hang with its diagnosis.
        res = run_in_rig(script, timeout=RIG_TIMEOUT_S, files=files)
    except RigError as e:
        return {"__error__": f"the rig did not run group {group!r}: {e}\n(whole console: {CONSOLE_LOG})"}
    warn_about_recoveries(res)
    results = {}
    for line in res.output.splitlines():
        if line.startswith("INNER-RESULT "):
            r = json.loads(line[len("INNER-RESULT "):])
            results[r["name"]] = r
    timings = {"group": group, "rig_wall_s": round(time.monotonic() - start, 1),
               "rig_ready_s": res.ready_time, "outer_boots": res.attempts,
               "inner": {n: {"wall_s": r["wall"], "marks": r["marks"], "rc": r["rc"]}
                         for n, r in results.items()}}
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    (CACHE_DIR / f"last-real-linux-timings-{group}.json").write_text(json.dumps(timings, indent=2))
    (CACHE_DIR / f"last-real-linux-results-{group}.json").write_text(json.dumps(results, indent=2))
    print(f"\nrig timings: {json.dumps(timings)}")
    if res.rc != 0:
        return {"__error__": f"inner script of group {group!r} failed rc={res.rc}:\n{res.output[-3000:]}"}
    return results


@pytest.fixture(scope="module")
def inner():
    """``inner[name]`` -> that case's result, booting its group's rig on first use."""

    class Results:
        def __getitem__(self, name: str) -> dict:
            group = next(g for g, names in GROUPS.items() if name in names)
            if group not in _RESULTS:
                _RESULTS[group] = _run_group(group)
            results = _RESULTS[group]
            if "__error__" in results:
                pytest.fail(results["__error__"])
            if name not in results:
                pytest.fail(f"inner case {name!r} did not report (see the rig output)")
            return results[name]

    return Results()


def _case(inner, name) -> dict:
    r = inner[name]
    if r.get("flaky"):  # shown in pytest's warnings summary, also under -q, pass or fail
        warnings.warn(f"rig case {name}: triple fault or timeout, booted when tried again "
                      f"(attempts {r['attempts']}):\n{r['flaky']}", stacklevel=2)
    return r


def _describe(r) -> str:
    trouble = first_trouble(r["stderr"])
    return (f"rc={r['rc']} timed_out={r['timed_out']} wall={r['wall']}s\n--- stdout (tail)\n"
            f"{r['stdout'][-2500:]}\n--- stderr (tail)\n{r['stderr'][-2500:]}"
            + (f"\n--- from the stderr's crash report\n{trouble}" if trouble else "")
            + (f"\n--- earlier attempts\n{r['earlier_attempts']}" if r.get("earlier_attempts") else ""))


def _value(r, key) -> str:
    m = re.search(rf"^{key}=(.*?)\r?$", r["stdout"], re.M)
    assert m, f"guest did not print {key}=\n{_describe(r)}"
    return m.group(1)


@pytest.mark.parametrize("name", ["pvh", "linux64", "linux64-bzimage", "linux32-bzimage"])
def test_boots_to_init_and_powers_off(inner, name):
    r = _case(inner, name)
    assert "GUEST-MARKER-UP" in r["stdout"], _describe(r)
    assert "PVHBOOT-EXIT=0" in r["stdout"], _describe(r)
    assert r["rc"] == 0, _describe(r)  # ACPI S5 through `poweroff -f` -> pvhboot exits 0


def test_two_vcpus_online(inner):
    r = _case(inner, "pvh")
    assert _value(r, "CPUS-ONLINE") == "0-1", _describe(r)
    assert _value(r, "NPROC") == "2"


def test_console_input_reaches_user_space(inner):
    r = _case(inner, "pvh")
    assert _value(r, "GOT-LINE") == f"[{INPUT_LINE}]", _describe(r)


def _guest_boot_params(r):
    from pvhboot.abi.bootparam import boot_params

    raw = bytes.fromhex(_value(r, "BP"))
    assert len(raw) == ctypes.sizeof(boot_params), len(raw)
    return boot_params.from_buffer_copy(raw)


def _predict(kernel: Path, protocol: str, cpus: int, cmdline: str, initrd: bytes, tmp: Path):
    """What pvhboot wrote (linux64) or what Linux derives from what pvhboot wrote (PVH), computed on
    the host with the same inputs and plan as the inner `pvhboot boot`."""
    from pvhboot.abi.bootparam import boot_params
    from pvhboot.boot import Blob, BootConfig, load_guest, plan_guest
    from pvhboot.image import load_kernel
    from pvhboot.memory import GuestMemory

    initrd_path = tmp / "check.cpio"
    initrd_path.write_bytes(initrd)
    image = load_kernel(str(kernel))
    config = BootConfig(memory=MEMORY, cpus=cpus, cmdline=cmdline, initrd=str(initrd_path),
                        protocol=protocol)
    plan = plan_guest(image, config)
    with GuestMemory(list(plan.ram_ranges)) as mem:
        load_guest(plan, mem)
        if protocol == "pvh":
            from pvhboot.boot.convert import start_info_to_boot_params

            si = plan.find(Blob.START_INFO)
            return start_info_to_boot_params(mem.read(si.addr, si.size), mem.read)
        zp = plan.find(Blob.ZERO_PAGE)
        return boot_params.from_buffer_copy(mem.read(zp.addr, ctypes.sizeof(boot_params)))


def _fields(bp) -> dict:
    out = {"e820_entries": bp.e820_entries,
           "acpi_rsdp_addr": bp.acpi_rsdp_addr,
           "ext_cmd_line_ptr": bp.ext_cmd_line_ptr,
           "ext_ramdisk_image": bp.ext_ramdisk_image,
           "ext_ramdisk_size": bp.ext_ramdisk_size}
    for f in ("hardware_subarch", "hardware_subarch_data", "type_of_loader", "cmd_line_ptr",
              "ramdisk_image", "ramdisk_size", "version", "boot_flag", "header"):
        out[f"hdr.{f}"] = getattr(bp.hdr, f)
    for i in range(bp.e820_entries):
        e = bp.e820_table[i]
        out[f"e820[{i}]"] = (hex(e.addr), hex(e.size), int(e.type))
    return out


@pytest.mark.parametrize("name,protocol,cpus,cmdline", [
    ("pvh", "pvh", 2, BASE_CMDLINE + " want_input"),
    ("linux64", "linux64", 1, BASE_CMDLINE),
])
def test_boot_params_match_prediction(inner, debian_vmlinux, tmp_path, name, protocol, cpus, cmdline):
    r = _case(inner, name)
    seen = _fields(_guest_boot_params(r))
    predicted = _fields(_predict(debian_vmlinux, protocol, cpus, cmdline, _check_initrd(), tmp_path))
    mismatches = [f"{k}: guest {seen.get(k)!r} != predicted {predicted.get(k)!r}"
                  for k in sorted(set(seen) | set(predicted)) if seen.get(k) != predicted.get(k)]
    assert not mismatches, "boot_params differ:\n" + "\n".join(mismatches)
    assert _value(r, "CMDLINE") == cmdline
    if protocol == "pvh":  # the facts Linux's PVH code sets, independent of pvhboot's converter
        assert seen["hdr.type_of_loader"] == 0xB0 and seen["hdr.hardware_subarch"] == 0
        assert ("0xa0000", "0x60000", 2) in seen.values()  # the ISA range Linux appends


def test_panic_with_reboot_ends_in_crash_report(inner):
    r = _case(inner, "panic-reboot")
    assert not r["timed_out"], _describe(r)
    assert r["rc"] == 1, _describe(r)
    assert "Kernel panic" in r["stdout"] + r["stderr"], _describe(r)
    assert "triple fault" in r["stderr"].lower(), _describe(r)
    # The register dump is the reset state on AMD; the outer kernel's kvm_exit trace (inner_checks.py)
    # has the instruction: reboot=t's `int3` with no IDT (intr_info: valid, software interrupt, vector 3).
    trace = r.get("shutdown_trace") or []
    assert any(re.search(r"reason shutdown rip 0xffffffff8[0-9a-f]{7} .* intr_info 0x80000403", ln)
               for ln in trace), _describe(r)


def test_panic_without_reboot_stopped_by_timeout(inner):
    r = _case(inner, "panic-timeout")
    assert not r["timed_out"], _describe(r)  # pvhboot stopped it, not the harness
    assert r["rc"] == 1, _describe(r)
    assert "Kernel panic" in r["stdout"] + r["stderr"], _describe(r)
    assert "timeout" in r["stderr"].lower(), _describe(r)


def test_pvhboot_run_streams_output_and_exit_status(inner):
    r = _case(inner, "run")
    assert r["rc"] == 7, _describe(r)
    # no kernel log, LF line ends, every byte of the final burst before the poweroff
    assert r["stdout"] == "run-says-hi\nargs=[a b]\n" + "x" * RUN_BURST + "\nrun-last-line\n", _describe(r)
