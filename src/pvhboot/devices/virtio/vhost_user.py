"""The front end of the vhost-user protocol (QEMU docs/interop/vhost-user.rst), over a unix socket.

Only what a virtio device whose queues run in another process needs: GET/SET_FEATURES, SET_OWNER,
SET_MEM_TABLE (the guest RAM's memfds, passed with SCM_RIGHTS), SET_VRING_NUM/ADDR/BASE/KICK/CALL
and GET_VRING_BASE (which stops a ring).  VHOST_USER_F_PROTOCOL_FEATURES is never acked, so the
back end enables each ring when it receives its kick fd (vhost-user.rst "Starting and stopping
rings") and no protocol feature (reply-ack, config space, ...) is in play.

Every message: a 12-byte header {u32 request; u32 flags; u32 size} then ``size`` bytes of payload.
flags bits 0-1 are the version (1); bit 2 marks a reply.
"""
from __future__ import annotations

import errno
import os
import socket
import stat
import struct
import time

VHOST_USER_VERSION = 0x1
VHOST_USER_REPLY_MASK = 0x4
VHOST_USER_GET_FEATURES = 1
VHOST_USER_SET_FEATURES = 2
VHOST_USER_SET_OWNER = 3
VHOST_USER_SET_MEM_TABLE = 5
VHOST_USER_SET_VRING_NUM = 8
VHOST_USER_SET_VRING_ADDR = 9
VHOST_USER_SET_VRING_BASE = 10
VHOST_USER_GET_VRING_BASE = 11
VHOST_USER_SET_VRING_KICK = 12
VHOST_USER_SET_VRING_CALL = 13
VHOST_USER_F_PROTOCOL_FEATURES = 30
VHOST_MEMORY_BASELINE_NREGIONS = 8  # regions one SET_MEM_TABLE may carry

_HEADER = struct.Struct("<III")
_U64 = struct.Struct("<Q")
_VRING_STATE = struct.Struct("<II")  # struct vhost_vring_state {index; num}
_VRING_ADDR = struct.Struct("<IIQQQQ")  # {index; flags; desc; used; avail; log}: front-end virtual addrs
_MEM_HEADER = struct.Struct("<II")  # {nregions; padding}
_MEM_REGION = struct.Struct("<QQQQ")  # {guest_phys_addr; memory_size; userspace_addr; mmap_offset}


_NOT_LISTENING_YET = (errno.ECONNREFUSED, errno.ENOENT, errno.EAGAIN)


def _not_a_socket(path: str) -> bool:
    try:
        return not stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False  # not there yet


class VhostUserError(Exception):
    """The back end hung up or answered nonsense."""


class VhostUserClient:
    RETRY_S = 0.01

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        # The back end's socket file appears at its bind() and takes connections from its listen():
        # in between a connect is refused (seen once in the rig with virtiofsd), so a refused or
        # missing socket is tried again until ``timeout``.
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            self.sock.settimeout(timeout)
            try:
                self.sock.connect(path)
                return
            except OSError as e:
                self.sock.close()
                if e.errno in _NOT_LISTENING_YET and time.monotonic() < deadline and not _not_a_socket(path):
                    time.sleep(self.RETRY_S)
                    continue
                raise VhostUserError(f"cannot connect to the vhost-user socket {path}: {e.strerror}") from None

    def close(self) -> None:
        self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def _send(self, request: int, payload: bytes = b"", fds: list[int] = ()) -> None:
        msg = _HEADER.pack(request, VHOST_USER_VERSION, len(payload)) + payload
        try:
            if fds:
                socket.send_fds(self.sock, [msg], list(fds))
            else:
                self.sock.sendall(msg)
        except OSError as e:
            raise VhostUserError(f"vhost-user request {request}: {e.strerror or e}") from None

    def _reply(self, request: int, size: int) -> bytes:
        try:
            head = self._recv_exact(_HEADER.size)
            req, flags, length = _HEADER.unpack(head)
            body = self._recv_exact(length)
        except OSError as e:
            raise VhostUserError(f"vhost-user reply to {request}: {e.strerror or e}") from None
        if req != request or not flags & VHOST_USER_REPLY_MASK or length != size:
            raise VhostUserError(f"vhost-user: unexpected reply (request {req}, flags {flags:#x}, "
                                 f"{length} bytes) to request {request}")
        return body

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise VhostUserError("the vhost-user back end closed the socket")
            buf += chunk
        return bytes(buf)

    # --- requests ---
    def get_features(self) -> int:
        self._send(VHOST_USER_GET_FEATURES)
        return _U64.unpack(self._reply(VHOST_USER_GET_FEATURES, 8))[0]

    def set_features(self, features: int) -> None:
        self._send(VHOST_USER_SET_FEATURES, _U64.pack(features))

    def set_owner(self) -> None:
        self._send(VHOST_USER_SET_OWNER)

    def set_mem_table(self, regions: list[tuple[int, int, int, int]]) -> None:
        """``regions``: (guest_phys_addr, size, userspace_addr, fd) per RAM region (mmap offset 0)."""
        if not 1 <= len(regions) <= VHOST_MEMORY_BASELINE_NREGIONS:
            raise VhostUserError(f"{len(regions)} memory regions; vhost-user carries 1..8")
        payload = _MEM_HEADER.pack(len(regions), 0) + b"".join(
            _MEM_REGION.pack(gpa, size, uaddr, 0) for gpa, size, uaddr, _ in regions)
        self._send(VHOST_USER_SET_MEM_TABLE, payload, [fd for *_, fd in regions])

    def set_vring_num(self, index: int, num: int) -> None:
        self._send(VHOST_USER_SET_VRING_NUM, _VRING_STATE.pack(index, num))

    def set_vring_base(self, index: int, base: int) -> None:
        self._send(VHOST_USER_SET_VRING_BASE, _VRING_STATE.pack(index, base))

    def get_vring_base(self, index: int) -> int:
        """Stops ring ``index`` and returns its next avail index (vhost-user.rst)."""
        self._send(VHOST_USER_GET_VRING_BASE, _VRING_STATE.pack(index, 0))
        return _VRING_STATE.unpack(self._reply(VHOST_USER_GET_VRING_BASE, 8))[1]

    def set_vring_addr(self, index: int, desc: int, used: int, avail: int) -> None:
        self._send(VHOST_USER_SET_VRING_ADDR, _VRING_ADDR.pack(index, 0, desc, used, avail, 0))

    def set_vring_kick(self, index: int, fd: int) -> None:
        self._send(VHOST_USER_SET_VRING_KICK, _U64.pack(index & 0xFF), [fd])

    def set_vring_call(self, index: int, fd: int) -> None:
        self._send(VHOST_USER_SET_VRING_CALL, _U64.pack(index & 0xFF), [fd])
