"""Start, watch and stop QEMU's virtiofsd (the vhost-user back end of a virtio-fs share).

The daemon gets a private socket in a temporary directory; pvhboot waits (bounded) for the socket
to appear, connects as the vhost-user front end (devices/virtio/fs.py), and a watcher thread waits
on the process: a daemon that exits while the VM runs ends the VM with a report naming it and the
last lines it logged.  ``stop()`` terminates it (SIGTERM, then SIGKILL after a grace period).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time

from ..errors import ConfigError

VIRTIOFSD_CANDIDATES = ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/virtiofsd")
SOCKET_WAIT_S = 10.0


def find_virtiofsd() -> str:
    env = os.environ.get("PVHBOOT_VIRTIOFSD")
    for candidate in ((env,) if env else ()) + VIRTIOFSD_CANDIDATES:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("virtiofsd")
    if found:
        return found
    raise ConfigError("virtiofsd not found (Debian: apt-get install qemu-system-common; or set PVHBOOT_VIRTIOFSD)")


def sandbox_mode(source: str) -> str:
    """virtiofsd's default sandbox pivot_root()s into the shared directory, which the kernel refuses
    when that directory lives on the initramfs's rootfs (pivot_root(2): EINVAL), as in the nested
    rig; chroot works there."""
    best, fstype = "", ""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                mount_point = fields[4]
                sep = fields.index("-")
                if (source == mount_point or source.startswith(mount_point.rstrip("/") + "/")) \
                        and len(mount_point) >= len(best):
                    best, fstype = mount_point, fields[sep + 1]
    except (OSError, ValueError, IndexError):
        return "namespace"
    return "chroot" if fstype == "rootfs" else "namespace"


class Virtiofsd:
    def __init__(self, source: str, tag: str, binary: str | None = None) -> None:
        if not os.path.isdir(source):
            raise ConfigError(f"shared directory {source!r} is not a directory")
        self.source = os.path.abspath(source)
        self.tag = tag
        self.binary = binary or find_virtiofsd()
        self._dir = tempfile.mkdtemp(prefix="pvhboot-virtiofsd-")
        self.socket_path = os.path.join(self._dir, "vhost-user.sock")
        self._log_path = os.path.join(self._dir, "virtiofsd.log")
        self._stopping = False
        self.proc: subprocess.Popen | None = None
        self._watcher: threading.Thread | None = None

    def start(self) -> Virtiofsd:
        # No -o announce_submounts: it turns every host mount point into an automount dentry in the
        # guest, which overlayfs refuses to traverse (EREMOTE), and `run` overlays the host root.
        cmd = [self.binary, f"--socket-path={self.socket_path}", "-o", f"source={self.source}",
               "-o", "cache=auto", "-o", "log_level=warn",
               "-o", f"sandbox={sandbox_mode(self.source)}"]
        with open(self._log_path, "wb") as log:
            try:
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             start_new_session=True)  # Ctrl-C goes to pvhboot, not to it
            except OSError as e:
                raise ConfigError(f"cannot start {self.binary}: {e.strerror}") from None
        deadline = time.monotonic() + SOCKET_WAIT_S
        while not os.path.exists(self.socket_path):
            if self.proc.poll() is not None:
                raise ConfigError(f"virtiofsd for {self.source} exited at start with status "
                                  f"{self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"virtiofsd for {self.source}: no socket after {SOCKET_WAIT_S:g} s")
            time.sleep(0.01)
        return self

    def log_tail(self, lines: int = 5) -> str:
        try:
            with open(self._log_path, "rb") as f:
                text = f.read()[-4096:].decode(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(nothing logged)"

    def watch(self, on_death) -> None:
        """Call ``on_death(message)`` (from a watcher thread) if the daemon exits before stop()."""
        def wait() -> None:
            rc = self.proc.wait()
            if not self._stopping:
                on_death(f"virtiofsd for {self.source} (tag {self.tag}) exited with status {rc} while the "
                         f"VM was running: {self.log_tail()}")
        self._watcher = threading.Thread(target=wait, name=f"pvhboot-virtiofsd-{self.tag}", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stopping = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)
