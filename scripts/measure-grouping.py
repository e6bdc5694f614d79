#!/usr/bin/env python3
"""Why coffre groups small chunks into one zstd frame, and which level it uses.

usage: measure-grouping.py TREE     (needs: pip install zstandard)

Compresses every regular file of TREE one frame per file (what restic and borg do) and grouped
into frames of 64 KiB, 256 KiB and 1 MiB (what coffre does), at zstd levels 1-3, single thread.
Prints ratio, total size and CPU seconds for each.
"""
import os, sys, time
import zstandard
root = sys.argv[1]
files=[]
for d, ds, fs in os.walk(root):
    ds.sort(); fs.sort()
    for f in fs:
        p=os.path.join(d,f)
        if os.path.islink(p): continue
        files.append(open(p,'rb').read())
tot=sum(map(len,files))
for lvl in [1,2,3]:
    c=zstandard.ZstdCompressor(level=lvl)
    t=time.time(); per=sum(len(c.compress(b)) for b in files); t1=time.time()-t
    res=[f"lvl{lvl} per-file {tot/per:.3f} ({per/1e6:.1f}MB {t1:.1f}s)"]
    for g in [64<<10, 256<<10, 1<<20]:
        out=0; buf=[]; n=0
        t=time.time()
        for b in files:
            if len(b) >= g:
                out+=len(c.compress(b)); continue
            buf.append(b); n+=len(b)
            if n>=g:
                out+=len(c.compress(b''.join(buf))); buf=[]; n=0
        if buf: out+=len(c.compress(b''.join(buf)))
        res.append(f"g{g>>10}K {tot/out:.3f} ({out/1e6:.1f}MB {time.time()-t:.1f}s)")
    print(' | '.join(res), flush=True)
