"""unit tier: `pvhboot compare` user errors are one line and exit 2, caught before anything boots
(the builder's dry run checks each cell); the entry paths offered for an ELF and for a bzImage; the
seeded-fault option stays out of the help."""
from __future__ import annotations

import json

import pytest

from pvhboot.cli import main
from pvhboot.compare.cells import path_specs
from pvhboot.compare.engine import Options, plan_cells
from pvhboot.errors import ConfigError


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["compare", "--quiet", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv,message", [
    (["--paths", "pvh,xen"], "--paths 'pvh,xen': xen not a path of"),
    (["--paths", "linux32"], "linux32 not a path of"),  # the probe is an ELF: no 32-bit Linux entry
    (["--cpus", "0"], "invalid --cpus '0'"),
    (["--cpus", "two"], "invalid --cpus 'two'"),
    (["--memory", "lots"], "invalid size 'lots'"),
    (["--memory", "1M"], "too small"),
    (["--jobs", "0"], "invalid --jobs 0"),
    (["--timeout", "-1"], "invalid timeout -1.0"),
    (["--initrd", "/nonexistent/initrd"], "cannot read --initrd"),
    (["/nonexistent/kernel"], "cannot read kernel /nonexistent/kernel"),
    (["--seed-fault", "gremlins:pvh"], "unknown seeded fault 'gremlins'"),
    (["--seed-fault", "cmdline-cut"], "invalid --seed-fault 'cmdline-cut' (NAME:PATH)"),
    (["--seed-fault", "cmdline-cut:linux32"], "path 'linux32' is not compared"),
    (["--cpus", "1", "--seed-fault", "madt-cpu-missing:pvh"], "at least 2 vCPUs"),
    (["--json", "/nonexistent/dir/x.json"], "cannot write --json /nonexistent/dir/x.json"),
    (["--json", "/"], "refusing to write --json /: a directory"),
    (["--retries", "-1"], "invalid --retries -1 (0 to 10)"),
    (["--retries", "11"], "invalid --retries 11 (0 to 10)"),
    (["/dev/zero"], "kernel"),
])
def test_user_errors_are_one_line_exit_2(capsys, argv, message):
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2
    assert err.startswith("pvhboot: error: ") and err.count("\n") == 1, err
    assert message in err


def test_a_file_that_is_not_a_kernel(capsys, tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"\0" * 4096)
    rc, _, err = run_cli(capsys, str(junk))
    assert rc == 2 and "neither an ELF vmlinux" in err


NOT_A_RECORD = "cell record 0 is not one `pvhboot compare --json` writes"
CELL = {"path": "pvh", "cpus": 2, "memory": 512 << 20, "status": "ok", "fingerprint": {"x": "1"}}


def _baseline(**changes) -> str:
    return json.dumps({"collector": "probe", "cells": [{**CELL, **changes}]})


@pytest.mark.parametrize("content,message", [
    ("not json", "not JSON"),
    (json.dumps({"cells": [{"path": "pvh"}], "collector": "probe"}), NOT_A_RECORD),
    (json.dumps({"cells": [], "collector": "linux"}), "holds linux fingerprints, this run probe"),
    (json.dumps([1, 2]), "not a `pvhboot compare --json` file"),
    # Each of these reached the diff or the report and ended in a traceback (found 2026-12-02):
    (_baseline(status="crash", stderr=5), NOT_A_RECORD),             # report: str + int
    (_baseline(fingerprint={"x": [1]}), NOT_A_RECORD),               # diff: unhashable
    (_baseline(status="crash", exit="poweroff"), NOT_A_RECORD),      # report: str.get
    (_baseline(status="crash", failures=7, attempts=3), NOT_A_RECORD),
    (_baseline(status="crash", failures=["a", 2]), NOT_A_RECORD),
    (_baseline(memory="512M"), NOT_A_RECORD),
    (_baseline(cpus=True), NOT_A_RECORD),
])
def test_bad_baseline(capsys, tmp_path, content, message, monkeypatch):
    import pvhboot.compare.engine as engine

    monkeypatch.setattr(engine, "run_cells", lambda *a, **k: pytest.fail("booted before checking the baseline"))
    f = tmp_path / "b.json"
    f.write_text(content)
    rc, _, err = run_cli(capsys, "--baseline", str(f))
    assert rc == 2 and message in err, err


def test_a_baseline_record_as_compare_writes_it_is_accepted():
    from pvhboot.compare.engine import is_cell_record

    assert is_cell_record({**CELL, "exit": {"reason": "poweroff", "code": 0}, "fault": None, "wall_s": 0.1,
                           "crash_report": "", "failures": ["head"], "attempts": 2, "flaky": "head"})


def test_seed_fault_is_not_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = capsys.readouterr().out
    assert "--seed-fault" not in out and "--cluster" in out and "--baseline" in out


def test_paths_of_an_elf_and_a_bzimage(tmp_path, debian_bzimage):
    from pvhboot.image import load_kernel
    from pvhboot.probe import probe_path

    assert list(path_specs(load_kernel(probe_path()))) == ["pvh", "linux64"]
    bz = path_specs(load_kernel(debian_bzimage))
    assert list(bz) == ["pvh", "linux64", "linux32", "linux64-vmlinux"]
    assert (bz["pvh"].image, bz["linux32"].image, bz["linux64-vmlinux"].image) == ("vmlinux", "bzimage", "vmlinux")
    kind, cells = plan_cells(Options(kernel=str(debian_bzimage), cpus=(2,), memory=(256 << 20,),
                                     faults=(("cmdline-cut", "linux32"),)), str(tmp_path))
    assert kind == "linux"
    assert [(c.path, c.protocol, c.fault) for c in cells] == [
        ("pvh", "pvh", None), ("linux64", "linux64", None), ("linux32", "linux32", "cmdline-cut"),
        ("linux64-vmlinux", "linux64", None)]
    vmlinux = tmp_path / "vmlinux"
    assert cells[0].kernel == cells[3].kernel == str(vmlinux) and vmlinux.read_bytes()[:4] == b"\x7fELF"
    assert cells[1].kernel == str(debian_bzimage)
    assert cells[0].link_text == 0xFFFFFFFF81000000  # the x86_64 default __START_KERNEL
    assert "nokaslr" in cells[0].cmdline.split() and cells[0].cmdline.endswith("pvhboot.compare=1")


def test_bad_cluster_address_is_one_line(capsys):
    pytest.importorskip("distributed", reason="Dask distributed is not installed (pip install 'pvhboot[cluster]')")
    rc, _, err = run_cli(capsys, "--cpus", "1", "--cluster", "bogus://x")
    assert rc == 2 and err.startswith("pvhboot: error: --cluster bogus://x: cannot connect"), err


def test_collector_initramfs_follows_the_users_initrd(tmp_path):
    """Linux cells get busybox + the collector as `pvhboot run`'s command, after the user's initrd
    (concatenated newc archives, 4-byte aligned; the collector's /init is unpacked last and runs)."""
    import subprocess

    from pvhboot.commands.compare import _collector_initramfs
    from pvhboot.commands.run import find_busybox

    try:
        find_busybox()
    except ConfigError as e:
        pytest.skip(f"no static busybox: {e}")
    user = tmp_path / "user.cpio"
    user.write_bytes(b"070701" + b"x" * 101)  # 107 bytes: padded to 108
    out = _collector_initramfs(str(tmp_path), str(user))
    with open(out, "rb") as f:
        data = f.read()
    assert data[:107] == user.read_bytes() and data[107:108] == b"\0" and data[108:114] == b"070701"
    names = subprocess.run(["cpio", "-it"], input=data[108:], capture_output=True).stdout.decode().split()
    assert {"init", "root/collect.sh", "bin/busybox"} <= set(names)
