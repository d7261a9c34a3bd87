"""virtio-mmio devices under the real Debian cloud kernel, in the nested rig (one rig boot, four
inner `pvhboot run` boots, ~1 min): the host root through virtio-fs + virtiofsd (read-only under a
tmpfs overlay, --rwdir written through), a virtio-blk disk formatted and written by the guest and
checked on the development machine by e2fsck, a read-only disk refusing writes, and a virtiofsd
that dies mid-run ending the VM with a report.  The rig's own file system plays "the host"."""
from __future__ import annotations

import base64
import gzip
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from rigrun import INNER_RETRIES, run_or_fail, time_limit, warn_about_inner_retries  # tests/rig/ is on sys.path

HERE = Path(__file__).resolve().parent
RIG_TIMEOUT_S = 400
pytestmark = [pytest.mark.rig, pytest.mark.usefixtures("rig_available"), time_limit(RIG_TIMEOUT_S)]

RUN = "pvhboot run --memory 256M --timeout 90"
SCRIPT = r"""
W=/rig/work
# One inner boot, booted again up to RETRIES more times when pvhboot says the guest triple-faulted or
# timed out: the nested bench's random faults, the rule every rig case follows (inner_checks.py --retried
# decides and prints an INNER-RETRIED line for the host-side warning).  $1 names the case.
retrying() {
  name=$1; shift; n=0
  while :; do
    "$@" > /tmp/try.out 2> /tmp/try.err; rc=$?
    if [ $rc -ne 0 ] && [ $n -lt RETRIES ] && python3 $W/inner_checks.py --retried $name $((n+1)) /tmp/try.err; then
      n=$((n+1)); continue
    fi
    cat /tmp/try.out; cat /tmp/try.err >&2; return $rc
  done
}
mkdir -p $W/rw $W/cwd && echo cwd-marker > $W/cwd/cwd-marker.txt
printf 'host-side\n' > $W/rw/hostfile
printf 'PRETTY_NAME="pvhboot nested rig"\nID=pvhboot-rig\n' > /etc/os-release
cd $W/cwd

echo "== fs"
retrying fs RUN --rwdir $W/rw -- sh -c 'cat /etc/os-release; ls $PWD; cat /rig/work/rw/hostfile;
  printf "guest bytes\001\002\n" > /rig/work/rw/out.bin; echo nope > /rig/work/outside.txt; echo "PWD=$PWD"'
echo "FS-RC=$?"
echo "OUT-BIN=$(od -An -tx1 $W/rw/out.bin | tr -d ' \n')"
[ -e $W/outside.txt ] && echo OUTSIDE=present || echo OUTSIDE=absent

echo "== disk"
dd if=/dev/zero of=$W/disk.img bs=1M count=8 2>/dev/null
retrying disk RUN --disk $W/disk.img -- sh -c 'mke2fs -q /dev/vda && mkdir -p /tmp/m && mount /dev/vda /tmp/m &&
  printf "written by the guest\n" > /tmp/m/hello.txt && sync && umount /tmp/m && echo disk-ok'
echo "DISK-RC=$?"
echo "DISK-BEGIN"; gzip -c $W/disk.img | base64; echo "DISK-END"

echo "== ro"
dd if=/dev/zero bs=1M count=1 2>/dev/null | tr '\000' 'A' > $W/ro.img
before=$(md5sum < $W/ro.img)
retrying ro RUN --disk $W/ro.img,ro -- sh -c 'echo "SYSRO=$(cat /sys/block/vda/ro)";
  dd if=/dev/zero of=/dev/vda bs=512 count=1 conv=fsync 2>/dev/null && echo write=ok || echo write=refused;
  dd if=/dev/vda bs=512 count=1 2>/dev/null | od -An -c | head -1'
echo "RO-RC=$?"
[ "$before" = "$(md5sum < $W/ro.img)" ] && echo RO-IMAGE=unchanged || echo RO-IMAGE=changed

echo "== dies"
n=0
while :; do
  RUN -- sh -c 'echo guest-ready; sleep 100' > /tmp/dies.out 2> /tmp/dies.err & p=$!
  i=0
  while ! grep -q guest-ready /tmp/dies.out && kill -0 $p 2>/dev/null && [ $i -lt 600 ]; do
    sleep 0.2; i=$((i+1))
  done
  kill -9 $(pidof virtiofsd) 2>/dev/null
  wait $p; rc=$?
  # booted again only if the guest never got to user space (then virtiofsd's death is not the stop)
  grep -q guest-ready /tmp/dies.out || [ $n -ge RETRIES ] ||
    ! python3 $W/inner_checks.py --retried dies $((n+1)) /tmp/dies.err || { n=$((n+1)); continue; }
  break
done
echo "DIES-RC=$rc"
sed 's/^/DIES-ERR /' /tmp/dies.err
""".replace("RUN", RUN).replace("RETRIES", str(INNER_RETRIES))


@pytest.fixture(scope="module")
def rig_output() -> str:
    res = run_or_fail(SCRIPT, timeout=RIG_TIMEOUT_S,
                      files={"rig/work/inner_checks.py": (HERE / "inner_checks.py").read_bytes()})
    assert res.rc == 0, res.output[-3000:]
    warn_about_inner_retries(res.output)
    return res.output


def _section(out: str, name: str) -> str:
    m = re.search(rf"^== {name}\r?$(.*?)(?=^== |\Z)", out, re.M | re.S)
    assert m, f"no section {name}:\n{out[-3000:]}"
    return m.group(1).replace("\r\n", "\n")


def test_host_root_read_only_and_rwdir_written_through(rig_output):
    s = _section(rig_output, "fs")
    assert 'PRETTY_NAME="pvhboot nested rig"' in s  # the host's /etc, through virtio-fs
    assert "cwd-marker.txt" in s and "PWD=/rig/work/cwd" in s  # CMD ran in the host's cwd
    assert "host-side" in s
    assert "FS-RC=0" in s
    assert "OUT-BIN=" + (b"guest bytes\x01\x02\n").hex() in s  # same bytes on the host
    assert "OUTSIDE=absent" in s  # a write outside --rwdir stayed in the guest's overlay


def test_guest_formatted_disk_checks_clean_on_the_host(rig_output, tmp_path):
    s = _section(rig_output, "disk")
    assert "disk-ok" in s and "DISK-RC=0" in s, s[-2000:]
    blob = s.split("DISK-BEGIN\n", 1)[1].split("DISK-END", 1)[0]
    img = tmp_path / "disk.img"
    img.write_bytes(gzip.decompress(base64.b64decode("".join(blob.split()))))
    e2fsck = shutil.which("e2fsck") or "/usr/sbin/e2fsck"
    debugfs = shutil.which("debugfs") or "/usr/sbin/debugfs"
    if not shutil.which(e2fsck):
        pytest.skip("e2fsck is not installed (e2fsprogs)")
    r = subprocess.run([e2fsck, "-fn", str(img)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([debugfs, "-R", "cat /hello.txt", str(img)], capture_output=True, text=True, timeout=60)
    assert r.stdout == "written by the guest\n", r.stdout + r.stderr


def test_read_only_disk_refuses_writes(rig_output):
    s = _section(rig_output, "ro")
    assert "SYSRO=1" in s  # VIRTIO_BLK_F_RO reached the guest's block layer
    assert "write=refused" in s
    assert re.search(r"^\s*A\s+A\s+A", s, re.M), s  # and reads still work
    # (Linux never lets a write reach a VIRTIO_BLK_F_RO disk: BLKROSET cannot clear the disk's
    # read-only flag since 5.11, so the device's own IOERR answer is covered by the unit tier.)
    assert "RO-IMAGE=unchanged" in s


def test_virtiofsd_dying_ends_the_vm_with_a_report(rig_output):
    s = _section(rig_output, "dies")
    assert "DIES-RC=1" in s, s
    assert "virtiofsd" in s and "exited with status" in s, s
