"""devices/virtio/vhost_user.py: connecting to a back end that has bound its socket but is not yet
listening (virtiofsd between bind() and listen(): seen as "Connection refused" in the rig)."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from pvhboot.devices.virtio.vhost_user import VhostUserClient, VhostUserError


def test_a_socket_that_listens_late_is_connected_to(tmp_path):
    path = str(tmp_path / "vu.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)  # the file exists from here on; connects are refused until listen()

    def listen_late():
        time.sleep(0.3)
        server.listen(1)
    t = threading.Thread(target=listen_late)
    t.start()
    client = VhostUserClient(path, timeout=5.0)
    conn, _ = server.accept()
    client.sock.sendall(b"x")
    assert conn.recv(1) == b"x"
    t.join()
    for s in (conn, server, client):
        s.close()


def test_a_socket_that_never_listens_is_one_error_after_the_timeout(tmp_path):
    path = str(tmp_path / "vu.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    start = time.monotonic()
    with pytest.raises(VhostUserError, match="cannot connect to the vhost-user socket .*: Connection refused"):
        VhostUserClient(path, timeout=0.3)
    assert time.monotonic() - start < 5
    server.close()


def test_a_path_that_is_not_a_socket_fails_at_once(tmp_path):
    path = tmp_path / "plain"
    path.write_text("")
    with pytest.raises(VhostUserError, match="cannot connect"):
        VhostUserClient(str(path), timeout=5.0)
