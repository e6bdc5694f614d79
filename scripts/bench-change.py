#!/usr/bin/env python3
"""Deterministic edit of a copy of the Linux tree for the incremental benchmark.

usage: bench-change.py TREE SEED

Edits ~1 % of the regular files in place (same-size overwrites, line inserts, appends, cuts),
deletes 300 files and adds 300 (30 of them in a new directory). Touched files get fixed mtimes so
the result is the same on every run with the same seed. Prints a one-line summary.
"""
import os
import random
import sys

tree, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
files = []
for d, dirs, names in os.walk(tree):
    dirs.sort()
    for n in sorted(names):
        p = os.path.join(d, n)
        if os.path.isfile(p) and not os.path.islink(p):
            files.append(p)
rng.shuffle(files)
n_edit = len(files) // 100
edited, deleted, added, written = files[:n_edit], files[n_edit:n_edit + 300], [], 0
FIXED = 1_700_000_000
for i, p in enumerate(edited):
    with open(p, "rb") as f:
        data = f.read()
    kind = i % 4
    blob = ("/* coffre bench edit %d %d */\n" % (seed, i)).encode()
    if kind == 0 and len(data) > len(blob):  # same-size overwrite
        at = rng.randrange(0, len(data) - len(blob))
        data = data[:at] + blob + data[at + len(blob):]
    elif kind == 1:  # insert a line
        at = rng.randrange(0, len(data) + 1)
        data = data[:at] + blob + data[at:]
    elif kind == 2:  # append
        data = data + blob * 3
    else:  # cut
        at = rng.randrange(0, max(1, len(data)))
        data = data[:at] + data[at + 64:]
    written += len(blob)
    with open(p, "wb") as f:
        f.write(data)
    os.utime(p, (FIXED + i, FIXED + i))
for p in deleted:
    os.unlink(p)
newdir = os.path.join(tree, "coffre-bench-added")
os.makedirs(newdir, exist_ok=True)
for i in range(300):
    d = newdir if i < 30 else os.path.dirname(files[rng.randrange(len(files))])
    if not os.path.isdir(d):
        d = newdir
    p = os.path.join(d, "added-%d-%d.c" % (seed, i))
    body = ("/* added file %d */\n" % i).encode() * rng.randrange(10, 400)
    with open(p, "wb") as f:
        f.write(body)
    written += len(body)
    os.utime(p, (FIXED, FIXED))
    added.append(p)
os.utime(newdir, (FIXED, FIXED))
print("edited %d files, deleted %d, added %d; %.2f MB written" % (len(edited), len(deleted), len(added), written / 1e6))
