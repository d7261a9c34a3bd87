"""rig tier: `pvhboot boot --gdb` on a real Linux (Debian's cloud kernel, PVH entry) on a real KVM
(kvm_amd in the nested rig), with Debian's gdb inside the rig as the client.

The rig runs Debian's ``gdb-minimal`` (the same gdb 13 without Python, so far fewer libraries to pack;
scripts/setup-tests.sh unpacks it into .cache/gdb-minimal) from the per-run archive, with the shared
libraries ``ldd`` lists for it.  One rig run, two inner boots of the same kernel, initrd and
``nokaslr`` command line:

1. without gdb: user space prints the /proc/kallsyms lines of startup_64, start_kernel, boot_params
   and boot_command_line (the kernel has no symbol table; ``nokaslr`` keeps these addresses for boot 2);
2. with ``--gdb 127.0.0.1:0 --gdb-wait``: gdb starts at the PVH entry (EBX -> start_info), sets an int3
   breakpoint in the 32-bit entry code (hardware KVM: KVM_GUESTDBG_USE_SW_BP), then at startup_64's
   physical address (long mode), then at start_kernel by its virtual address (int3 through the kernel's
   page tables), reads boot_params and the command line there, and continues to user space.
"""
from __future__ import annotations

import io
import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from pvhboot.commands.run import write_run_initramfs
from pvhboot.rig import RigError, run_in_rig

pytestmark = [pytest.mark.rig, pytest.mark.usefixtures("rig_available")]

ROOT = Path(__file__).resolve().parents[2]
GDB_MINIMAL = ROOT / ".cache" / "gdb-minimal" / "usr" / "bin" / "gdb"
START_INFO_MAGIC = 0x336EC578
HDR_MAGIC = 0x53726448  # "HdrS", boot_params.hdr.header (Documentation/arch/x86/boot.rst)
BP_HEADER, BP_E820_ENTRIES = 0x202, 0x1E8  # offsets in struct boot_params (bootparam.h)
CMDLINE = "console=ttyS0 quiet nokaslr panic=-1 reboot=t gdbmarker=42"
INIT_SH = r"""grep -E ' (startup_64|start_kernel|boot_params|boot_command_line)$' /proc/kallsyms | sed 's/^/KSYM /'
echo GDB-USERSPACE-UP
"""

# Runs inside the rig (Debian's python3.11): the two boots, one INNER-GDB line of JSON with all results.
INNER = r'''
import json, os, re, selectors, subprocess, sys, time

case = json.load(open("/rig/work/gdb-case.json"))
BOOT = [sys.executable, "-m", "pvhboot", "boot", "/tmp/vmlinux", "--initrd", "/rig/work/gdb-init.cpio",
        "--cmdline", case["cmdline"], "--memory", "256M", "--timeout", "120"]
env = {**os.environ, "LD_LIBRARY_PATH": "/rig/work/gdb-lib"}
result = {}

first = subprocess.run(BOOT, capture_output=True, text=True, timeout=180)
syms = {m.group(2): int(m.group(1), 16)
        for m in re.finditer(r"KSYM ([0-9a-f]+) \w (\w+)", first.stdout)}
result["syms"] = {k: hex(v) for k, v in syms.items()}
result["first_rc"] = first.returncode
if set(syms) != {"startup_64", "start_kernel", "boot_params", "boot_command_line"}:
    result["first_out"] = first.stdout[-3000:] + first.stderr[-3000:]
    print("INNER-GDB " + json.dumps(result), flush=True)
    sys.exit(0)

vmm = subprocess.Popen(BOOT + ["--gdb", "127.0.0.1:0", "--gdb-wait"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
err = b""
deadline = time.monotonic() + 60
while b"listening on" not in err and time.monotonic() < deadline and vmm.poll() is None:
    sel = selectors.DefaultSelector()
    sel.register(vmm.stderr, selectors.EVENT_READ)
    if sel.select(1.0):
        err += os.read(vmm.stderr.fileno(), 4096)
m = re.search(rb"listening on ([0-9.]+):(\d+)", err)
if not m:
    vmm.kill()
    result["error"] = "the VMM did not listen: " + err.decode(errors="replace")
    print("INNER-GDB " + json.dumps(result), flush=True)
    sys.exit(0)
PAGE_OFFSET_KERNEL = 0xFFFFFFFF80000000  # __START_KERNEL_map: nokaslr's physical = virtual - this
script = "\n".join([
    "set pagination off", "set confirm off", "set width 0",
    f"target remote {m.group(1).decode()}:{m.group(2).decode()}",
    "echo @entry\\n", "p/x $pc", "x/2wx $ebx", "monitor mechanisms",
    f"break *{case['entry_int3']:#x}", "continue", "echo @int3\\n", "p/x $pc", "delete",
    f"break *{syms['startup_64'] - PAGE_OFFSET_KERNEL:#x}", "continue", "echo @startup64\\n",
    "p/x $pc", "p/x $efer", "p/x $cs", "delete",
    f"break *{syms['start_kernel']:#x}", "continue", "echo @start_kernel\\n", "p/x $pc",
    f"x/wx {syms['boot_params'] + case['bp_header']:#x}",
    f"x/bx {syms['boot_params'] + case['bp_e820_entries']:#x}",
    f"x/s {syms['boot_command_line']:#x}",
    "delete", "echo @run\\n", "continue",
]) + "\n"
open("/tmp/gdb-linux.gdb", "w").write(script)
t0 = time.monotonic()
try:
    g = subprocess.run(["/rig/work/gdb", "-nx", "-batch", "-x", "/tmp/gdb-linux.gdb"], env=env,
                       capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    result["gdb"] = g.stdout + g.stderr
except subprocess.TimeoutExpired as e:
    result["gdb"] = (e.stdout or b"").decode(errors="replace") + "\n@@ gdb timed out"
result["gdb_wall"] = round(time.monotonic() - t0, 1)
try:  # after gdb's last `continue` the guest runs to user space and powers off; else end it now
    out, rest = vmm.communicate(timeout=120 if "@run" in result["gdb"] else 5)
except subprocess.TimeoutExpired:
    vmm.kill()
    out, rest = vmm.communicate()
result["vmm_rc"] = vmm.returncode
result["vmm_stdout"] = out.decode(errors="replace")[-3000:]
result["vmm_stderr"] = (err + rest).decode(errors="replace")[-3000:]

# 3. int3 forced (`monitor swbreak int3`) at the same 32-bit instruction: does KVM see it here?
vmm = subprocess.Popen(BOOT + ["--gdb", "127.0.0.1:0", "--gdb-wait", "--timeout", "30"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
err = b""
deadline = time.monotonic() + 60
while b"listening on" not in err and time.monotonic() < deadline and vmm.poll() is None:
    sel = selectors.DefaultSelector()
    sel.register(vmm.stderr, selectors.EVENT_READ)
    if sel.select(1.0):
        err += os.read(vmm.stderr.fileno(), 4096)
m = re.search(rb"listening on ([0-9.]+):(\d+)", err)
if m:
    open("/tmp/gdb-int3.gdb", "w").write("\n".join([
        "set pagination off", "set confirm off",
        f"target remote {m.group(1).decode()}:{m.group(2).decode()}",
        "monitor swbreak int3", f"break *{case['entry_int3']:#x}", "continue", "echo @int3hit\\n",
        "p/x $pc", "kill"]) + "\n")
    try:
        g = subprocess.run(["/rig/work/gdb", "-nx", "-batch", "-x", "/tmp/gdb-int3.gdb"], env=env,
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        result["int3_gdb"] = g.stdout + g.stderr
    except subprocess.TimeoutExpired:
        result["int3_gdb"] = "@@ gdb timed out"
try:
    out, rest = vmm.communicate(timeout=40)
except subprocess.TimeoutExpired:
    vmm.kill()
    out, rest = vmm.communicate()
result["int3_vmm_rc"] = vmm.returncode
result["int3_vmm_stderr"] = (err + rest).decode(errors="replace")[-2000:]
print("INNER-GDB " + json.dumps(result), flush=True)
'''


def _ldd(path: Path) -> list[str]:
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=True).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"=> (/\S+)", line) or re.match(r"\s*(/\S+)", line)
        if m:
            libs.append(m.group(1))
    return libs


def _init_cpio() -> bytes:
    buf = io.BytesIO()
    write_run_initramfs(buf, ["sh", "-c", INIT_SH])  # quoted for sh by the /init writer
    return buf.getvalue()


def _entry_int3_address(vmlinux: Path) -> tuple[int, int]:
    """(PHYS32_ENTRY, the address of its third instruction): an instruction boundary in the 32-bit
    PVH code for a software breakpoint, found with capstone in the ELF."""
    import capstone

    from pvhboot.image import load_kernel

    image = load_kernel(str(vmlinux))
    entry = image.entries.pvh
    seg = next(s for s in image.elf.segments if s.paddr <= entry < s.paddr + s.filesz)
    code = bytes(image.elf.data[seg.offset + entry - seg.paddr:][:64])
    insns = list(capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32).disasm(code, entry))
    return entry, insns[2].address


@pytest.fixture(scope="module")
def gdb_linux(debian_vmlinux) -> dict:
    if not GDB_MINIMAL.exists():
        pytest.skip(f"Debian's gdb-minimal is not unpacked in {GDB_MINIMAL.parent.parent.parent} "
                    "(scripts/setup-tests.sh does it)")
    entry, entry_int3 = _entry_int3_address(debian_vmlinux)
    case = {"cmdline": CMDLINE, "entry_int3": entry_int3, "bp_header": BP_HEADER,
            "bp_e820_entries": BP_E820_ENTRIES}
    files = {"rig/work/gdb-inner.py": INNER.encode(), "rig/work/gdb-case.json": json.dumps(case).encode(),
             "rig/work/gdb-init.cpio": _init_cpio(), "rig/work/gdb": GDB_MINIMAL.read_bytes()}
    for lib in _ldd(GDB_MINIMAL):
        files[f"rig/work/gdb-lib/{Path(lib).name}"] = Path(lib).read_bytes()
    script = ("pvhboot extract /rig/guest/vmlinuz -o /tmp/vmlinux >/dev/null || exit 90\n"
              "chmod 755 /rig/work/gdb\n"
              # gdb and the stub talk over 127.0.0.1: the rig's init leaves the loopback down
              "ip link set lo up 2>/dev/null || busybox ip link set lo up || ifconfig lo 127.0.0.1 up\n"
              "python3 /rig/work/gdb-inner.py\n")
    start = time.monotonic()
    try:
        res = run_in_rig(script, timeout=480, files=files)
    except RigError as e:
        pytest.fail(f"the rig did not run: {e}")
    line = next((ln for ln in res.output.splitlines() if ln.startswith("INNER-GDB ")), None)
    assert line, f"no result from inside the rig (rc={res.rc}):\n{res.output[-4000:]}"
    result = json.loads(line[len("INNER-GDB "):])
    result["entry"] = entry
    result["rig_wall_s"] = round(time.monotonic() - start, 1)
    print("\nrig gdb timings:", json.dumps({k: result.get(k) for k in ("rig_wall_s", "gdb_wall")}))
    return result


def _sections(out: str) -> dict[str, str]:
    return dict(re.findall(r"@(\w+)\n(.*?)(?=@\w+\n|\Z)", out, re.S))


def _describe(r: dict) -> str:
    return "\n".join(f"--- {k}\n{r.get(k)}" for k in ("syms", "gdb", "vmm_rc", "vmm_stderr", "vmm_stdout",
                                                       "first_out", "error") if r.get(k) is not None)


def test_symbols_from_a_nokaslr_boot(gdb_linux):
    r = gdb_linux
    assert "error" not in r and "first_out" not in r, _describe(r)
    assert int(r["syms"]["start_kernel"], 16) >= 0xFFFFFFFF81000000, _describe(r)


def test_breaks_at_pvh_entry_int3_long_mode_and_start_kernel(gdb_linux):
    r = gdb_linux
    s = _sections(r.get("gdb", ""))
    assert {"entry", "int3", "startup64", "start_kernel", "run"} <= set(s), _describe(r)
    assert f"$1 = {r['entry']:#x}" in s["entry"], _describe(r)
    assert re.search(rf":\s+{START_INFO_MAGIC:#x}\s+0x00000001", s["entry"]), _describe(r)
    # the rig's KVM runs nested under QEMU TCG, where int3 never reaches KVM: break uses DR0-3
    assert "break (Z0): debug registers (KVM nested under QEMU TCG" in s["entry"], _describe(r)
    assert "Breakpoint 1, " in s["entry"] + s["int3"], _describe(r)
    startup = s["startup64"]
    efer = re.search(r"\$4 = (0x[0-9a-f]+)", startup)
    assert efer and int(efer.group(1), 16) & 0x500 == 0x500, _describe(r)  # EFER.LMA|LME: long mode
    phys_startup = int(r["syms"]["startup_64"], 16) - 0xFFFFFFFF80000000
    assert f"$3 = {phys_startup:#x}" in startup, _describe(r)
    sk = s["start_kernel"]
    assert f"$6 = {r['syms']['start_kernel']}" in sk, _describe(r)


def test_boot_params_and_command_line_at_start_kernel(gdb_linux):
    r = gdb_linux
    sk = _sections(r.get("gdb", "")).get("start_kernel", "")
    assert re.search(rf":\s+{HDR_MAGIC:#010x}", sk), _describe(r)  # hdr.header "HdrS"
    m = re.search(r"<?[^\n]*:\s+(0x[0-9a-f]{2})\n", sk.split(f"{HDR_MAGIC:#010x}", 1)[-1])
    assert m and int(m.group(1), 16) > 0, _describe(r)  # e820_entries
    assert "gdbmarker=42" in sk, _describe(r)  # boot_command_line


def test_continues_to_user_space(gdb_linux):
    r = gdb_linux
    assert "GDB-USERSPACE-UP" in r.get("vmm_stdout", ""), _describe(r)
    assert "exited normally" in r.get("gdb", ""), _describe(r)
    assert r.get("vmm_rc") == 0, _describe(r)


def test_int3_does_not_reach_kvm_nested_under_tcg(gdb_linux):
    """Why the stub does not use int3 in the rig: forced (`monitor swbreak int3`), the guest takes the
    #BP itself (no IDT yet at the PVH entry: a triple fault) and KVM never reports it.  If this ever
    passes the breakpoint instead, int3_unusable_reason's TCG rule can go."""
    r = gdb_linux
    out = r.get("int3_gdb", "")
    assert "break (Z0): int3" in out, _describe(r) + "\n--- int3 session\n" + out
    assert "Breakpoint 1, " not in out, out  # never reported as a stop
    assert "triple fault" in r.get("int3_vmm_stderr", ""), r.get("int3_vmm_stderr")
