"""Runs INSIDE the inner guest (under pvhboot or QEMU, the rig's root through virtio-fs): times the
virtio-blk disk (/dev/vda, O_DIRECT) and virtio-fs reads, prints one ``GBENCH {json}`` line."""
import json
import mmap
import os
import random
import time

DISK, TREE, BIG = "/dev/vda", "/rig/work/tree", "/rig/work/big.bin"
r = {}
size = 64 << 20
buf = mmap.mmap(-1, 1 << 20)  # page aligned, as O_DIRECT wants
fd = os.open(DISK, os.O_RDONLY | os.O_DIRECT)
t = time.perf_counter()
off = 0
while off < size:
    off += os.preadv(fd, [buf], off)
r["seq_read_MBps"] = size / (time.perf_counter() - t) / 1e6
small = mmap.mmap(-1, 4096)
offsets = [random.randrange(size // 4096) * 4096 for _ in range(2000)]
t = time.perf_counter()
for o in offsets:
    os.preadv(fd, [small], o)
r["rand4k_read_iops"] = len(offsets) / (time.perf_counter() - t)
os.close(fd)
fd = os.open(DISK, os.O_WRONLY | os.O_DIRECT)
t = time.perf_counter()
off = 0
while off < size:
    off += os.pwritev(fd, [buf], off)
os.fsync(fd)
r["seq_write_MBps"] = size / (time.perf_counter() - t) / 1e6
os.close(fd)
t = time.perf_counter()
r["tree_files"] = sum(len(files) + len(dirs) for _, dirs, files in os.walk(TREE))
for dirpath, _, files in os.walk(TREE):
    for f in files:
        os.stat(os.path.join(dirpath, f))
r["tree_walk_s"] = time.perf_counter() - t
t = time.perf_counter()
n = 0
with open(BIG, "rb", buffering=0) as f:
    while True:
        chunk = f.read(1 << 20)
        if not chunk:
            break
        n += len(chunk)
r["large_read_MBps"] = n / (time.perf_counter() - t) / 1e6
print("GBENCH " + json.dumps(r), flush=True)
