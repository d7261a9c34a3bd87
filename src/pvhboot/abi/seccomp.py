"""The seccomp user-space ABI pvhboot uses to sandbox vCPU threads, declared once.

Sources: include/uapi/linux/seccomp.h (seccomp(2) operations and flags, struct seccomp_data,
seccomp_notif, seccomp_notif_resp), include/uapi/linux/filter.h (struct sock_fprog),
include/uapi/linux/prctl.h (PR_SET_NO_NEW_PRIVS) and arch/x86/entry/syscalls/syscall_64.tbl.
Documentation/userspace-api/seccomp_filter.rst describes the user-space notification protocol.
"""
from __future__ import annotations

import ctypes

from . import check_layout

NR_seccomp = 317  # x86-64 syscall_64.tbl
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3  # seccomp(2) returns a listener fd for USER_NOTIF
PR_SET_NO_NEW_PRIVS = 38  # required before a filter is loaded without CAP_SYS_ADMIN
SOCK_FILTER_SIZE = 8  # struct sock_filter {u16 code; u8 jt, jf; u32 k}
# SECCOMP_IOCTL_NOTIF_RECV/SEND wait for / answer these; issued by libseccomp's seccomp_notify_*.


class sock_fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]  # len counts sock_filter items


check_layout(sock_fprog, 16, len=0, filter=8)


class seccomp_data(ctypes.Structure):
    _fields_ = [("nr", ctypes.c_int32), ("arch", ctypes.c_uint32), ("instruction_pointer", ctypes.c_uint64),
                ("args", ctypes.c_uint64 * 6)]


check_layout(seccomp_data, 64, nr=0, arch=4, instruction_pointer=8, args=16)


class seccomp_notif(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint64), ("pid", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("data", seccomp_data)]


check_layout(seccomp_notif, 80, id=0, pid=8, flags=12, data=16)


class seccomp_notif_resp(ctypes.Structure):
    # error: 0 or a negated errno the syscall returns; val: its return value when error is 0
    _fields_ = [("id", ctypes.c_uint64), ("val", ctypes.c_int64), ("error", ctypes.c_int32),
                ("flags", ctypes.c_uint32)]


check_layout(seccomp_notif_resp, 24, id=0, val=8, error=16, flags=20)
