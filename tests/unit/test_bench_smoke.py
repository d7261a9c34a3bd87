"""bench/ harness: its parsers and result format (no timing assertions: numbers belong in bench/)."""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import builder_time, common, exit_roundtrip, memory, run  # noqa: E402


def test_parse_result_takes_the_last_json_line():
    out = "chatter\n" + json.dumps({"bench": "x", "rows": [], "notes": [], "details": {}}) + "\n"
    assert common.parse_result(out)["bench"] == "x"
    with pytest.raises(ValueError):
        common.parse_result("no json here\n{\"other\": 1}\n")


def test_row_ratio_and_goal_directions():
    r = common.row("1", "m", "us", 11.0, 10.0, "C", 1.10)
    assert r["ratio"] == pytest.approx(1.1) and r["met"] is True
    assert common.row("1", "m", "us", 12.0, 10.0, "C", 1.10)["met"] is False
    assert common.row("4", "m", "B/s", 600.0, 100.0, "Q", 5.0, ">=")["met"] is True
    assert common.row("4", "m", "B/s", 400.0, 100.0, "Q", 5.0, ">=")["met"] is False
    # without a reference the goal applies to the value itself
    assert common.row("3", "m", "ms", 49.0, goal=50.0)["met"] is True
    assert common.row("3", "m", "ms", 51.0, goal=50.0)["met"] is False
    assert common.row("7", "m", "VMs/s", 5.0)["met"] is None


def test_c_loop_output_parses():
    r = exit_roundtrip.parse_c_output("exits=100000 seconds=0.848850 us_per_exit=8.488 cpu_seconds=0.837831\n")
    assert r == {"exits": 100000, "seconds": 0.84885, "cpu_seconds": 0.837831}


def test_pvhboot_guest_is_the_c_loops_guest():
    """Bench 1 compares like with like: the bytes pvhboot runs start with the C loop's guest code."""
    src = (REPO / "bench/c/kvm_exit_loop.c").read_text()
    body = re.search(r"uint8_t code\[\] = \{([^}]*)\}", src).group(1)
    c_code = bytes(int(x, 0) for x in body.split(","))
    n = 100000
    c_code = c_code[:2] + n.to_bytes(4, "little") + c_code[6:]
    ours = exit_roundtrip.guest_code(n)
    assert ours[:len(c_code) - 1] == c_code[:-1]  # all but the final hlt (pvhboot leaves via port 0xf4)
    assert ours[len(c_code) - 1:] == bytes([0xB0, 0x00, 0xE6, 0xF4, 0xF4])


def test_importtime_and_split_parsers():
    text = ("import time: self [us] | cumulative | imported package\n"
            "import time:       898 |      19064 | site\n"
            "import time:       777 |      10000 |       elftools.elf.elffile\n")
    rows = builder_time.parse_importtime(text)
    assert rows == [("site", 898, 19064, 0), ("elftools.elf.elffile", 777, 10000, 3)]
    marks = {"spawn": 1.0, "python_started": 1.025, "imports": 1.070, "image_load": 1.072,
             "plan_and_memory": 1.073, "structure_writing": 1.078, "kvm_setup": 1.090, "first_kvm_run": 1.091}
    d = builder_time.split_durations(marks)
    assert d["python_startup"] == pytest.approx(25.0)
    assert d["imports"] == pytest.approx(45.0)
    assert d["after_startup"] == pytest.approx(66.0)
    assert sum(d[k] for k in builder_time.STEPS) == pytest.approx(d["after_startup"])


def test_smaps_and_status_parsers():
    smaps = ("7f0000000000-7f0001000000 rw-p 00000000 00:00 0\nSize: 16384 kB\nRss: 2048 kB\n"
             "7f0002000000-7f0003000000 rw-p 00000000 00:00 0\nRss: 512 kB\n")
    assert memory.rss_of_ranges(smaps, [(0x7F0000000000, 0x7F0001000000)]) == 2048 * 1024
    assert memory.rss_of_ranges(smaps, []) == 0
    assert memory.vm_hwm("Name: x\nVmHWM:\t   23640 kB\n") == 23640 * 1024


def test_table_and_markdown_render_every_row_kind():
    results = [{"bench": "a", "rows": [common.row("1", "exit", "us/exit", 10.0, 8.0, "C", 1.1),
                                       common.row("6", "rig", "s", None, None, "QEMU", 1.0, status="not run"),
                                       common.row("4", "console", "bytes/s", 5e5, 1e5, "QEMU", 5.0, ">=")],
                "notes": ["n1"]}]
    facts = {"date": "2026-01-01T00:00:00Z", "cpu_model": "AMD EPYC", "cpus": 2, "kernel": "6.x",
             "kvm_module": "kvm_pvm", "kvm_is_kvm_pvm": True, "python": "3.11", "qemu": "QEMU 7.2"}
    rows = run.table_rows(results)
    assert rows[0][-1] == "NO" and rows[1][-1] == "not run" and rows[2][-1] == "yes"
    md = run.markdown(results, facts)
    assert "kvm_pvm" in md and "| 6 | rig |" in md and "- a: n1" in md


@pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("ld")), reason="needs gcc and binutils")
def test_uart_flood_guest_builds_with_its_pvh_note(tmp_path):
    from pvhboot.image import load_kernel

    elf = common.build_uart_flood(tmp_path, 4096)
    image = load_kernel(str(elf))
    assert image.entries.pvh == 0x100000
    with pytest.raises(ValueError):
        common.build_uart_flood(tmp_path, 10)
