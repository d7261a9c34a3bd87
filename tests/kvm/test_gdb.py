"""kvm tier: `--gdb` driven by Debian's real gdb in batch mode (no hand-written client for the proofs).

The probe (with symbols: pvh_start32, probe_main, ap_count) is debugged from its PVH entry, through the
32- to 64-bit switch, to PROBE PASS, in one gdb session.  On kvm_pvm the stub's fallbacks are what is
exercised: ``break`` (Z0) becomes a debug-register breakpoint, ``watch`` is single-stepped.
"""
from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

import guests  # tests/kvm/guests.py
import pytest
from support import probe_elf, require_tool

import pvhboot
from pvhboot.image import load_kernel
from pvhboot.memory import GuestMemory
from pvhboot.vmm import Machine

pytestmark = pytest.mark.kvm

START_INFO_MAGIC = 0x336EC578  # hvm_start_info.magic (xen/include/public/arch-x86/hvm/start_info.h)
EFER_LMA = 1 << 10
LISTENING = re.compile(rb"gdb: listening on ([0-9.]+):(\d+)")
# `python -m pvhboot` from this checkout (the one pytest imports), not whatever is installed
CLI_ENV = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(pvhboot.__file__))}


@pytest.fixture(scope="module")
def gdb() -> str:
    return require_tool("gdb")


def start_vmm(*args: str, timeout: float = 120.0) -> tuple[subprocess.Popen, tuple[str, int], bytearray]:
    """`pvhboot boot ARGS --gdb 127.0.0.1:0` in a subprocess; returns it, the address it listens on
    (read from its stderr line) and the stderr seen so far (a reader thread keeps appending)."""
    # `pvhboot boot`, with every thread's Python stack dumped on SIGUSR2 (see dump_stacks)
    proc = subprocess.Popen([sys.executable, "-c", VMM_MAIN, "boot", *args, "--gdb", "127.0.0.1:0",
                             "--timeout", str(timeout)], env=CLI_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    err = bytearray()
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + 30
    while not LISTENING.search(err):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"the VMM did not start listening: {bytes(err)!r}")
        if sel.select(1.0):
            chunk = os.read(proc.stderr.fileno(), 4096)
            err += chunk
    sel.close()
    m = LISTENING.search(err)

    def drain():
        for chunk in iter(lambda: os.read(proc.stderr.fileno(), 4096), b""):
            err.extend(chunk)
    proc.drain = threading.Thread(target=drain, daemon=True)
    proc.drain.start()
    return proc, (m.group(1).decode(), int(m.group(2))), err


VMM_MAIN = ("import faulthandler, signal, sys; faulthandler.register(signal.SIGUSR2, all_threads=True); "
            "from pvhboot.cli import main; sys.exit(main(sys.argv[1:]))")


def dump_stacks(proc: subprocess.Popen, err: bytearray) -> str:
    """The VMM's thread stacks (for a test that found it stuck), from its stderr."""
    if proc.poll() is not None:
        return "(the VMM has exited)"
    before = len(err)
    proc.send_signal(signal.SIGUSR2)
    time.sleep(1.0)
    return bytes(err[before:]).decode(errors="replace")


def gdb_batch(gdb: str, lines: list[str], tmp_path, name: str = "script.gdb", **kw):
    """gdb -batch -x SCRIPT (a file: multi-line commands such as `while` need one), output merged."""
    script = tmp_path / name
    script.write_text("\n".join(["set pagination off", "set confirm off", "set width 0", *lines]) + "\n")
    return subprocess.Popen([gdb, "-nx", "-batch", "-x", str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL, **kw)


def run_gdb(gdb: str, address: tuple[str, int], commands: list[str], tmp_path, timeout: float = 120.0,
            vmm: tuple | None = None) -> str:
    """gdb's output for ``commands`` after connecting; when gdb does not finish in ``timeout``: what it
    said until then, the last remote-protocol traffic and (``vmm`` = (proc, err)) the VMM's stacks."""
    log = tmp_path / "remote.log"
    proc = gdb_batch(gdb, [f"file {probe_elf()}", f"set remotelogfile {log}",
                           f"target remote {address[0]}:{address[1]}", *commands], tmp_path)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # what gdb said until then is the diagnosis
        proc.kill()
        out, _ = proc.communicate()
        out += f"\n@@ gdb did not finish in {timeout} s; last traffic:\n"
        out += log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
        if vmm is not None:
            out += "\n@@ VMM stacks:\n" + dump_stacks(*vmm)
    return out


def finish(proc: subprocess.Popen, timeout: float = 60.0) -> tuple[int, bytes]:
    """Wait for the VMM (its stderr is read by the drain thread); returns (exit status, stdout)."""
    out = proc.stdout.read()
    rc = proc.wait(timeout)
    proc.drain.join(timeout)
    return rc, out


def test_probe_from_pvh_entry_through_long_mode_to_pass(gdb, tmp_path):
    """One session: stopped at PHYS32_ENTRY with EBX -> start_info, stepi until EFER.LMA, break at a C
    function by symbol, a watchpoint on a variable the AP writes, both vCPUs as threads, PROBE PASS."""
    entry = load_kernel(probe_elf()).entries.pvh
    proc, address, err = start_vmm("--gdb-wait", "--cpus", "2", "--memory", "64M")
    out = run_gdb(gdb, address, [
        "echo @entry\\n", "p/x $pc", "p/x $cs", "p/x $efer", "p/x $cr0", "x/2wx $ebx",
        "monitor mode",
        # stepi through the switch to long mode: one register file all along
        "while ($efer & 0x400) == 0\nstepi\nend",
        "echo @lma\\n", "p/x $efer", "p/x $cs", "p/x $cr0", "monitor mode",
        "stepi", "echo @longmode\\n", "p/x $cs", "monitor mode", "p $pc",
        "echo @bp\\n", "break probe_main", "continue",
        "delete",
        "echo @watch\\n", "watch *(unsigned int *)&ap_count", "continue",
        "p *(unsigned int *)&ap_count", "info threads",
        "delete", "continue",
    ], tmp_path, vmm=(proc, err))
    rc, console = finish(proc)
    sections = dict(re.findall(r"@(\w+)\n(.*?)(?=@\w+\n|\Z)", out, re.S))
    assert set(sections) == {"entry", "lma", "longmode", "bp", "watch"}, out
    at_entry = sections["entry"]
    assert f"$1 = {entry:#x}" in at_entry, out  # stopped before the first instruction, at the PVH entry
    assert "$2 = 0x10" in at_entry and "$3 = 0x0" in at_entry and "$4 = 0x1" in at_entry, out
    assert re.search(rf":\s+{START_INFO_MAGIC:#x}\s+0x00000001", at_entry), out  # magic, version 1
    assert "32-bit code, paging off" in at_entry, out
    lma = sections["lma"]  # the instruction that set CR0.PG: long mode active, still 32-bit code
    efer = int(re.search(r"\$5 = (0x[0-9a-f]+)", lma).group(1), 16)
    assert efer & EFER_LMA and "$7 = 0x80000011" in lma, out
    assert "32-bit code, paging on" in lma, out  # compatibility mode
    long_mode = sections["longmode"]  # one stepi more: the far jump to the 64-bit code segment
    assert "$8 = 0x18" in long_mode and "64-bit code, paging on" in long_mode, out
    assert "<pvh_long_mode>" in long_mode, out
    assert "Breakpoint 1, " in sections["bp"] and "in probe_main ()" in sections["bp"], out
    watch = sections["watch"]
    assert "Hardware watchpoint 2: *(unsigned int *)&ap_count" in watch, out
    assert "Old value = 0" in watch and "New value = 1" in watch, out
    # The AP counts itself; on kvm_pvm the watch is single-stepped on both vCPUs and the stop names the
    # vCPU that saw the change first (usually the AP), so either thread may be named.
    assert re.search(r"Thread [12] hit Hardware watchpoint 2", watch), out
    assert re.search(r"1\s+Thread 1 \(vCPU 0\)", watch) and re.search(r"2\s+Thread 2 \(vCPU 1\)", watch), out
    assert "exited normally" in out, out
    assert rc == 0 and b"PROBE PASS" in console, (rc, console[-500:], bytes(err))


def test_page_trap_breakpoints_from_the_entry_to_pass(gdb, tmp_path):
    """`monitor swbreak pagetrap`: break and hbreak as memory-slot holes, the mechanism the nested rig
    needs (no breakpoint kind reaches a KVM nested under QEMU TCG).  The first break is in the page
    the vCPU stands in at the PVH entry, so the whole 32-bit phase is stepped through with the page
    back in; a gdb read of a trapped page shows its bytes; the last `continue`, with no breakpoint
    left, runs at full speed to PROBE PASS."""
    image = load_kernel(probe_elf())
    proc, address, err = start_vmm("--gdb-wait", "--cpus", "2", "--memory", "64M")
    out = run_gdb(gdb, address, [
        "monitor swbreak pagetrap",
        "echo @long\\n", "break pvh_long_mode", "continue", "p/x $pc", "p/x $efer", "x/1bx pvh_long_mode",
        "echo @main\\n", "break probe_main", "continue", "p/x $pc",
        "echo @emit\\n", "delete", "hbreak emit", "continue", "p/x $pc", "info threads",
        "echo @end\\n", "delete", "continue",
    ], tmp_path, vmm=(proc, err))
    rc, console = finish(proc)
    sections = dict(re.findall(r"@(\w+)\n(.*?)(?=@\w+\n|\Z)", out, re.S))
    assert "page traps (monitor swbreak pagetrap; memory-slot holes" in out, out
    long = sections.get("long", "")
    assert "Breakpoint 1, " in long and "pvh_long_mode" in long, out
    assert re.search(r"\$2 = 0x5\d\d", long), out  # EFER: LME|LMA (0x500), NXE may be on too
    seg = image.elf.segments[0]
    first_byte = image.elf.data[int(re.search(r"Breakpoint 1 at (0x[0-9a-f]+)", out).group(1), 16)
                                - seg.paddr + seg.offset]
    assert re.search(rf"<pvh_long_mode>:\s+{first_byte:#04x}", long), out  # the page's bytes, not a hole
    assert "Breakpoint 2, " in sections.get("main", "") and "probe_main" in sections["main"], out
    emit = sections.get("emit", "")
    assert "Hardware assisted breakpoint 3 at " in emit and "hit Breakpoint 3, " in emit and "in emit ()" in emit, out
    assert re.search(r"2\s+Thread 2 \(vCPU 1\)", emit), out
    assert "exited normally" in sections.get("end", ""), out
    assert rc == 0 and b"PROBE PASS" in console, (rc, console[-500:], bytes(err))


def test_registers_memory_and_monitor(gdb, tmp_path):
    """g/G/p/P and m/M on a stopped vCPU, the 32-bit disassembly gdb cannot do itself; the script
    ends on an unreadable address (a gdb error ends a batch script: gdb detaches, the guest runs on)."""
    proc, address, err = start_vmm("--gdb-wait", "--memory", "64M")
    out = run_gdb(gdb, address, [
        "set $rax = 0x1122334455667788", "p/x $rax", "p/x $eax",
        "set {unsigned int}0x7000 = 0xfeedf00d", "x/1wx 0x7000",
        "p/x $fs_base", "p/x $cr4", "p $mxcsr", "info registers fctrl",
        "set $rax = 0", "monitor disas", "monitor mechanisms", "x/2wx 0xfffffff000",
    ], tmp_path)
    rc, console = finish(proc)
    assert "$1 = 0x1122334455667788" in out and "$2 = 0x55667788" in out, out
    assert re.search(r"0x7000:\s+0xfeedf00d", out), out
    assert "32-bit:" in out and f"{ENTRY:#x}: {first_instruction_32()}" in out, out  # decoded as 32-bit code
    assert "break (Z0):" in out, out
    assert "Cannot access memory at address 0xfffffff000" in out, out
    assert "fctrl" in out and "0x37f" in out, out  # the FPU state the builder set
    assert b"client detached; the guest runs on" in bytes(err), bytes(err)
    assert rc == 0 and b"PROBE PASS" in console, (rc, console[-300:], bytes(err))


ENTRY = load_kernel(probe_elf()).entries.pvh


def first_instruction_32() -> str:
    """The probe's first instruction as capstone decodes it in 32-bit mode ("bytes  mnemonic ops")."""
    import capstone

    image = load_kernel(probe_elf())
    seg = next(s for s in image.elf.segments if s.paddr <= ENTRY < s.paddr + s.filesz)
    code = bytes(image.elf.data[seg.offset + ENTRY - seg.paddr:][:16])
    insn = next(capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32).disasm(code, ENTRY))
    return f"{insn.bytes.hex(' '):<24} {insn.mnemonic} {insn.op_str}".rstrip()


def spin_machine(mem, **kw) -> Machine:
    mem.write(guests.LOAD, guests.SPIN_32)
    return Machine(mem, guests.flat32(), console=None, timeout=120, gdb="127.0.0.1:0", **kw)


def test_ctrl_c_interrupts_a_running_guest_and_kill_ends_the_vm(gdb, tmp_path):
    """Without --gdb-wait the guest runs; attaching stops it, Ctrl-C (0x03) stops it again after a
    continue, and `kill` ends the VM."""
    with GuestMemory([(0, 1 << 20)]) as mem, spin_machine(mem) as m:
        host, port = m.gdb.address
        script = ["set pagination off", f"target remote {host}:{port}", "p/x $pc",
                  # Ctrl-C half a second after the guest is resumed (gdb's own SIGINT -> 0x03 to the stub)
                  "python\nimport gdb, os, signal, threading\ndef on_cont(event):\n"
                  "    gdb.events.cont.disconnect(on_cont)\n"
                  "    threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()\n"
                  "gdb.events.cont.connect(on_cont)\nend",
                  "continue", "echo @after\\n", "p/x $pc", "kill"]
        client = gdb_batch(gdb, script, tmp_path)
        record = m.run()
        out, _ = client.communicate(timeout=60)
    assert f"$1 = {guests.LOAD:#x}" in out, out  # jmp . : the pc never moves
    after = out.split("@after", 1)[-1]
    assert "received signal SIGINT" in out and f"$2 = {guests.LOAD:#x}" in after, out
    assert record.reason == "quit" and record.exit_code == 0, record


def raw_client(address) -> socket.socket:
    s = socket.create_connection(address, timeout=10)
    return s


def recv_until(s: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_hostile_clients_then_a_real_gdb_attaches(gdb, tmp_path):
    """Bad checksum -> '-', unknown packet -> empty reply, an oversized packet -> disconnect, a client
    gone mid-packet -> the guest runs on; each time the listener takes the next client; finally
    Debian's gdb attaches to the still-running guest and kills it."""
    with GuestMemory([(0, 1 << 20)]) as mem, spin_machine(mem) as m:
        address = m.gdb.address
        results: dict[str, object] = {}

        def clients():
            try:
                with raw_client(address) as s:
                    s.sendall(b"$qSupported#00")  # wrong checksum
                    results["nak"] = recv_until(s, b"-")
                    s.sendall(b"$qNoSuchThing#%02x" % (sum(b"qNoSuchThing") & 0xFF))
                    results["unknown"] = recv_until(s, b"#00")
                    try:  # longer than PacketSize: the stub hangs up (a reset: our bytes are unread)
                        s.sendall(b"$m" + b"1" * 100_000)
                        results["after_huge"] = recv_until(s, b"\0")  # returns at EOF
                    except (ConnectionResetError, BrokenPipeError):
                        results["after_huge"] = b""
                with raw_client(address) as s:
                    s.sendall(b"$qSupp")  # and gone, mid-packet
                script = ["set pagination off", f"target remote {address[0]}:{address[1]}", "p/x $pc",
                          "info threads", "kill"]
                results["gdb"] = gdb_batch(gdb, script, tmp_path).communicate(timeout=60)[0]
            except Exception as e:  # noqa: BLE001 - reported by the assertions below
                results["error"] = repr(e)
                m.ctl.stop("quit", 3)

        t = threading.Thread(target=clients)
        t.start()
        record = m.run()
        t.join(60)
    assert "error" not in results, results
    assert results["nak"].startswith(b"-"), results
    assert results["unknown"].endswith(b"$#00"), results
    assert results["after_huge"] == b"", results  # the stub hung up
    assert f"$1 = {guests.LOAD:#x}" in results["gdb"] and "Thread 1 (vCPU 0)" in results["gdb"], results
    assert record.reason == "quit" and record.exit_code == 0, record


def test_gdb_wait_needs_gdb_and_a_bad_address_is_a_user_error():
    for args, msg in ((["--gdb-wait"], "--gdb-wait needs --gdb"), (["--gdb", "localhost:http"], "invalid --gdb"),
                      (["--gdb", "70000"], "invalid --gdb port")):
        p = subprocess.run([sys.executable, "-m", "pvhboot", "boot", *args], capture_output=True, text=True,
                           timeout=60, env=CLI_ENV)
        assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr, p.stderr
    # a port already taken
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "pvhboot", "boot", "--gdb", str(port)], capture_output=True,
                           text=True, timeout=60, env=CLI_ENV)
    assert p.returncode == 2 and "cannot listen for gdb" in p.stderr, p.stderr
