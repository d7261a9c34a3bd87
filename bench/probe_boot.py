"""Bench 2: probe boot to exit, whole-process wall time: ``pvhboot boot`` (the built-in probe, 512 MiB,
console to a file) against ``qemu-system-x86_64 -M microvm -accel kvm -kernel probe.elf`` on the same
/dev/kvm with the same memory, console to a file and a debug-exit port at 0xf4.  Interleaved runs,
medians.  Also reported: ``python3 -c pass`` (the interpreter's own start-up, a floor for pvhboot)
and the guest's own run time inside pvhboot (first KVM_RUN to exit, from ``--events-json``).
"""
from __future__ import annotations

import json
import shutil

from . import common
from .common import median, row

GOAL = 0.5


def measure(repeats: int = 5) -> dict:
    tmp = common.build_dir()
    probe = common.probe_path()
    cpu, cpu_failed = common.find_qemu_cpu(probe, tmp, survey=True)
    pv_out, q_out, ev = tmp / "pvh.out", tmp / "qemu.out", tmp / "events.json"
    runs = {"pvhboot": [], "qemu": [], "python": [], "guest": []}
    pvh_line = qemu_line = ""
    for _ in range(repeats):
        r = common.run_process(common.pvhboot_argv() + ["boot", "--memory", "512M", "--events-json", str(ev)],
                               stdout_path=str(pv_out))
        text = pv_out.read_text(errors="replace")
        pvh_line = next((ln for ln in reversed(text.splitlines()) if ln.startswith("PROBE")), "")
        if r.returncode != 0 or not pvh_line:
            raise RuntimeError(f"pvhboot boot failed ({r.returncode}): {r.stderr.decode()[-500:]}")
        runs["pvhboot"].append((r.wall_s, r.cpu_s, r.peak_rss_kib))
        runs["guest"].append(json.loads(ev.read_text())["wall_time_s"])
        if cpu is not None:
            r = common.run_process(common.qemu_microvm_argv(probe, "512M", str(q_out), cpu))
            text = q_out.read_text(errors="replace")
            qemu_line = next((ln for ln in reversed(text.splitlines()) if ln.startswith("PROBE")), "")
            if not qemu_line:
                raise RuntimeError(f"QEMU did not run the probe ({r.returncode}): {r.stderr.decode()[-500:]}")
            runs["qemu"].append((r.wall_s, r.cpu_s, r.peak_rss_kib))
        r = common.run_process(common.python_argv() + ["-c", "pass"])
        runs["python"].append((r.wall_s, r.cpu_s, r.peak_rss_kib))
    shutil.rmtree(tmp, ignore_errors=True)
    med = {k: tuple(median(x[i] for x in v) for i in range(3)) for k, v in runs.items() if v and k != "guest"}
    guest = median(runs["guest"])
    q = med.get("qemu", (None, None, None))
    rows = [
        row("2", "probe boot, whole process (wall)", "s", med["pvhboot"][0], q[0], "QEMU microvm", GOAL),
        row("2c", "probe boot, whole process (CPU)", "s", med["pvhboot"][1], q[1], "QEMU microvm"),
        row("2p", "python3 -c pass (interpreter start-up)", "s", med["python"][0], q[0], "QEMU microvm"),
        row("2g", "probe guest run inside pvhboot (first KVM_RUN to exit)", "s", guest, q[0], "QEMU microvm"),
    ]
    notes = ["pvhboot runs with its defaults: COM1's THR is a coalesced PIO zone (`--no-coalesced-uart` turns it off)",
             f"QEMU -cpu {cpu}; -cpu candidates on this /dev/kvm: "
             + "; ".join(f"{k}: {v}" for k, v in cpu_failed.items()),
             f"pvhboot probe: {pvh_line}", f"QEMU probe: {qemu_line}"]
    details = {"repeats": repeats, "runs": runs, "qemu_cpu": cpu, "qemu_cpu_refused": cpu_failed,
               "pvhboot_probe": pvh_line, "qemu_probe": qemu_line}
    return {"rows": rows, "notes": notes, "details": details}


main = common.repeats_main("probe_boot", measure, repeats=5)


if __name__ == "__main__":
    raise SystemExit(main())
