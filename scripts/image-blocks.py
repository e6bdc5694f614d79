#!/usr/bin/env python3
"""The unique non-zero 32 KiB blocks of a disk image, in disk order, concatenated: what coffre
stores of the image, for trying compression layouts with the zstd command line, e.g.

    scripts/image-blocks.py /var/tmp/coffre-bench/data/disk.img /var/tmp/blocks.bin
    zstd -b3 -B32K -i2 /var/tmp/blocks.bin      # one frame per block (image-frame 32K)
    zstd -b3 -B1M -i2 /var/tmp/blocks.bin       # 1 MiB frames
    scripts/image-blocks.py /var/tmp/coffre-bench/data/disk.img /var/tmp/sample.bin 16
    zstd --train-fastcover -B32K --maxdict=1M /var/tmp/sample.bin -o /var/tmp/dict
    zstd -b3 -B32K -i2 -D /var/tmp/dict /var/tmp/blocks.bin   # 32 KiB frames with a dictionary

usage: image-blocks.py IMAGE OUT [EVERY]   (EVERY: keep every EVERY-th block only, a training
sample; prints the number of unique blocks)
"""
import hashlib
import sys

BLOCK = 32768
src, dst = sys.argv[1], sys.argv[2]
every = int(sys.argv[3]) if len(sys.argv) > 3 else 1
seen, zero = set(), bytes(BLOCK)
with open(src, "rb") as f, open(dst, "wb") as out:
    while True:
        b = f.read(BLOCK)
        if not b:
            break
        if b == zero[: len(b)]:
            continue
        h = hashlib.blake2b(b, digest_size=16).digest()
        if h not in seen:
            seen.add(h)
            if (len(seen) - 1) % every == 0:
                out.write(b)
print(len(seen))
