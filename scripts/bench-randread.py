#!/usr/bin/env python3
"""Random 4 KiB reads from an image, verified against a reference copy.

usage: bench-randread.py IMAGE REFERENCE COUNT SEED

Offsets are 4 KiB-aligned, drawn (seeded) from the data extents of REFERENCE (SEEK_DATA /
SEEK_HOLE), so they hit stored blocks, not holes. Every read is compared with the same bytes of
REFERENCE. Prints: p50 and p99 latency in microseconds, and the number of mismatches.
"""
import os
import random
import sys
import time

image, ref, count, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rfd = os.open(ref, os.O_RDONLY)
size = os.fstat(rfd).st_size
extents, pos = [], 0
while pos < size:
    try:
        d = os.lseek(rfd, pos, os.SEEK_DATA)
    except OSError:
        break
    h = os.lseek(rfd, d, os.SEEK_HOLE)
    extents.append((d, h - d))
    pos = h
rng = random.Random(seed)
weights = [l for _, l in extents]
offsets = []
for _ in range(count):
    s, l = rng.choices(extents, weights)[0]
    offsets.append(((s + rng.randrange(max(1, l - 4096))) // 4096) * 4096)
fd = os.open(image, os.O_RDONLY)
lat, bad = [], 0
for off in offsets:
    t = time.perf_counter_ns()
    got = os.pread(fd, 4096, off)
    lat.append((time.perf_counter_ns() - t) / 1000)
    if got != os.pread(rfd, 4096, off):
        bad += 1
lat.sort()
print(f"{lat[len(lat) // 2]:.1f} {lat[int(len(lat) * 0.99)]:.1f} {bad}")
