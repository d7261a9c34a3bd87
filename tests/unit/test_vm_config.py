"""VmConfig: every VM option validated once, in one place (issue 11), and the shared CLI options."""
import argparse
import math
import os

import pytest

from pvhboot.commands.vm_options import PLAN_OPTIONS, add_vm_options, parse_size, vm_config_from_args
from pvhboot.errors import ConfigError
from pvhboot.memory import layout as L
from pvhboot.vmm.config import VmConfig


@pytest.mark.parametrize("timeout", [math.nan, math.inf, -math.inf, -1, 0, 0.0, True, "5"])
def test_bad_timeouts(timeout):
    with pytest.raises(ConfigError, match="timeout"):
        VmConfig(timeout=timeout)


def test_good_timeout_is_float():
    assert VmConfig(timeout=2).timeout == 2.0 and VmConfig().timeout is None


@pytest.mark.parametrize("cpus", [0, -1, 256, 1.5, True])
def test_bad_cpus(cpus):
    with pytest.raises(ConfigError, match="vCPU count"):
        VmConfig(cpus=cpus)


@pytest.mark.parametrize("memory", [0, -4096, 4097, L.MAX_MEMORY + 4096, 1.0])
def test_bad_memory(memory):
    with pytest.raises(ConfigError, match="memory size"):
        VmConfig(memory=memory)


def test_bad_cmdlines():
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xff at offset 1\)"):
        VmConfig(cmdline=b"a\xffb".decode("utf-8", "surrogateescape"))
    with pytest.raises(ConfigError, match="NUL"):
        VmConfig(cmdline="a\0b")
    with pytest.raises(ConfigError, match="longer than"):
        VmConfig(cmdline="x" * L.CMDLINE_MAX_SIZE)
    assert VmConfig(cmdline="console=ttyS0 é").cmdline == "console=ttyS0 é"


def test_bad_protocol():
    with pytest.raises(ConfigError, match="unknown protocol 'xen'"):
        VmConfig(protocol="xen")


def test_files_are_checked(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError, match="fifo, not a regular file"):  # and does not block
        VmConfig(initrd=str(fifo))
    with pytest.raises(ConfigError, match="character device"):
        VmConfig(symbols="/dev/zero")
    with pytest.raises(ConfigError, match="directory"):
        VmConfig(kernel=str(tmp_path))
    with pytest.raises(ConfigError, match="empty"):
        VmConfig(initrd=str(empty))
    with pytest.raises(ConfigError, match="does not exist"):
        VmConfig(events_json=str(tmp_path / "no" / "such" / "dir.json"))
    with pytest.raises(ConfigError, match="a directory, not a regular file"):
        VmConfig(events_json=str(tmp_path))
    with pytest.raises(ConfigError, match="character device"):
        VmConfig(events_json="/dev/full")
    assert VmConfig(initrd=str(fifo), check_files=False).initrd == str(fifo)


def test_with_revalidates():
    with pytest.raises(ConfigError):
        VmConfig().with_(cpus=0)


def test_boot_config_is_derived():
    b = VmConfig(memory=64 << 20, cpus=2, cmdline="x").boot_config("pvh")
    assert (b.memory, b.cpus, b.cmdline, b.protocol) == (64 << 20, 2, "x", "pvh")


def _parse(argv, **kw):
    p = argparse.ArgumentParser()
    add_vm_options(p, **kw)
    return p.parse_args(argv)


def test_shared_options_make_one_config():
    c = vm_config_from_args(_parse(["--memory", "6G", "--cpus", "3", "--timeout", "5",
                                    "--no-coalesced-uart", "--protocol", "linux64"]))
    assert (c.memory, c.cpus, c.timeout, c.coalesced_uart, c.protocol) == (6 << 30, 3, 5.0, False, "linux64")
    plan_args = _parse([], include=PLAN_OPTIONS, memory="64M")
    assert not hasattr(plan_args, "timeout") and vm_config_from_args(plan_args).memory == 64 << 20


def test_parse_size():
    assert parse_size("512") == 512 << 20 and parse_size("1T") == 1 << 40 and parse_size("16384K") == 16 << 20
    with pytest.raises(ConfigError, match="invalid size"):
        parse_size("lots")


def test_the_runtime_does_not_choose_a_kernel():
    """Booting the probe when no KERNEL is named is the command's choice, not the VMM's."""
    from pvhboot.vmm import MicroVM

    with pytest.raises(ConfigError, match="no kernel given"):
        MicroVM(memory=64 << 20)
