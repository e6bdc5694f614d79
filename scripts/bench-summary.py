#!/usr/bin/env python3
"""Summarise a scripts/bench TSV as markdown: medians per tool and step, ratios to restic,
and the targets of the foundation issue checked against this run.

usage: bench-summary.py RESULTS.tsv [CHANGE-SUMMARY.txt]
"""
import csv
import statistics
import sys

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
change = open(sys.argv[2]).read().strip() if len(sys.argv) > 2 else ""
tools = [t for t in ("coffre", "restic", "borg") if any(r["tool"] == t for r in rows)]


def vals(tool, step, key):
    return [float(r[key]) for r in rows if r["tool"] == tool and r["step"] == step and r[key] != ""]


def med(tool, step, key):
    v = vals(tool, step, key)
    return statistics.median(v) if v else None


def span(tool, step, key):
    v = vals(tool, step, key)
    if not v:
        return "–"
    m = statistics.median(v)
    if len(v) == 1:
        return f"{m:.2f}"
    return f"{m:.2f} [{min(v):.2f}–{max(v):.2f}]"


def mb(x):
    return "–" if x is None else f"{x / 1e6:.1f}"


out = []
p = out.append
have_tree = any(r["step"] == "a" for r in rows)
p(f"data: Linux tree (Debian linux-source), change: {change}" if have_tree else "(tree steps not run)")
p("")
if have_tree:
    p("| step | " + " | ".join(tools) + " | coffre / restic |")
    p("|---|" + "---|" * len(tools) + "---|")


    def line(label, step, key, fmt=span, ratio=True):
        cells = [fmt(t, step, key) for t in tools]
        r = ""
        c = med("coffre", step, key) if key else None
        rs = med("restic", step, key) if key else None
        if ratio and c is not None and rs:
            r = f"{c / rs:.2f}×"
        p(f"| {label} | " + " | ".join(cells) + f" | {r} |")


    def mbcell(t, step, key):
        return mb(med(t, step, key))


    def cpu(t, step, _):
        u, s = med(t, step, "user_s"), med(t, step, "sys_s")
        return "–" if u is None else f"{u + s:.2f}"


    def rss(t, step, _):
        v = vals(t, step, "rss_mib")
        return "–" if not v else f"{max(v):.0f}"


    line("a. initial backup: wall s (median [min–max])", "a", "wall_s")
    line("a. initial backup: CPU s (user+sys)", "a", "", cpu)
    line("a. repo MB after initial backup", "a", "bytes", mbcell)
    line("b. no-change re-backup: wall s", "b", "wall_s")
    line("b. repo MB added", "b", "bytes", mbcell, ratio=False)
    line("c. 1 %-changed incremental: wall s", "c", "wall_s")
    line("c. repo MB added", "c", "bytes", mbcell)
    line("f. restore to tmpfs: wall s", "f", "wall_s")
    line("f. restore: CPU s (user+sys)", "f", "", cpu)
    line("peak RSS MiB (a)", "a", "", rss, ratio=False)
    line("peak RSS MiB (b)", "b", "", rss, ratio=False)
    line("peak RSS MiB (c)", "c", "", rss, ratio=False)
    line("peak RSS MiB (f)", "f", "", rss, ratio=False)
    line("f. differences after restore (rsync, content + metadata)", "f-verify", "bytes",
         lambda t, s, k: "–" if med(t, s, k) is None else f"{med(t, s, k):.0f}", ratio=False)
    if any(r["step"] == "g" for r in rows):
        line("g. verify every byte: wall s", "g", "wall_s")
        line("g. verify: CPU s (user+sys)", "g", "", cpu)
        line("g. floor (read + decompress all packs, all cores): wall s", "g-floor", "wall_s", ratio=False)
        line("h. reclaim after forgetting half the points: wall s", "h", "wall_s")
        line("h. MB reclaimed", "h", "bytes", mbcell)
        line("h2. reclaim after forgetting all but the newest: wall s", "h2", "wall_s")
        line("h2. MB reclaimed", "h2", "bytes", mbcell)
        line("h. verify after reclaiming: wall s", "h-verify", "wall_s")
cat = vals("coffre", "b-catalog", "bytes")
if cat:
    p(f"| b. coffre catalog growth per no-change backup, bytes | {', '.join(str(int(c)) for c in cat)} | | | |")

if "coffre" in tools and "restic" in tools and med("coffre", "a", "wall_s") is not None:
    p("")
    p("Targets (foundation issue), this run:")
    checks = []

    def chk(name, ok, detail):
        checks.append(f"- [{'x' if ok else ' '}] {name}: {detail}")

    def ratio(step):
        return med("coffre", step, "wall_s") / med("restic", step, "wall_s")

    chk("initial backup ≤ 0.4× restic", ratio("a") <= 0.4, f"{ratio('a'):.2f}×")
    if "borg" in tools:
        cv, bv = med("coffre", "a", "bytes"), med("borg", "a", "bytes")
        chk("vault size ≤ borg zstd,3 repo", cv <= bv, f"{mb(cv)} MB vs {mb(bv)} MB")
    chk("no-change re-backup ≤ 0.3× restic", ratio("b") <= 0.3, f"{ratio('b'):.2f}×")
    if cat:
        chk("catalog grows < 64 KiB on a no-change backup", max(cat) < 65536, f"max {int(max(cat))} B")
    chk("incremental ≤ 0.3× restic", ratio("c") <= 0.3, f"{ratio('c'):.2f}×")
    cn, rn = med("coffre", "c", "bytes"), med("restic", "c", "bytes")
    chk("incremental new bytes ≤ restic's", cn <= rn, f"{mb(cn)} MB vs {mb(rn)} MB")
    chk("restore to tmpfs ≤ 0.5× restic", ratio("f") <= 0.5, f"{ratio('f'):.2f}×")
    if med("coffre", "g", "wall_s") is not None:
        g = med("coffre", "g", "wall_s")
        for other in ("restic", "borg"):
            o = med(other, "g", "wall_s")
            if o:
                chk(f"verify ≥ 3× faster than {other}", o / g >= 3, f"{o / g:.1f}× faster")
        fl = med("coffre", "g-floor", "wall_s")
        if fl:
            chk("verify within 1.5× of the read+decompress floor", g / fl <= 1.5, f"{g / fl:.2f}×")
        for step, what in (("h", "half the points"), ("h2", "all but the newest")):
            h, rh = med("coffre", step, "wall_s"), med("restic", step, "wall_s")
            if h and rh:
                chk(f"gc after forgetting {what} >= 3x faster than restic prune", rh / h >= 3,
                    f"{rh / h:.1f}x faster")
                cb, rb = med("coffre", step, "bytes"), med("restic", step, "bytes")
                chk(f"gc after forgetting {what} reclaims at least as much as restic prune",
                    cb >= rb, f"{mb(cb)} MB vs {mb(rb)} MB")
    peak = max(max(vals("coffre", s, "rss_mib") or [0]) for s in "abcf")
    chk("peak RSS ≤ 100 MiB", peak <= 100, f"{peak:.0f} MiB")
    p("\n".join(checks))
print("\n".join(out))

# ---- mount (issue 3) ----
mtools = [t for t in ("coffre", "restic", "borg", "memfs", "native") if any(r["tool"] == t and r["step"].startswith("e-") for r in rows)]
if mtools:
    def cell(t, step, key="wall_s", fmt="{:.2f}"):
        v = med(t, step, key)
        return "–" if v is None else fmt.format(v)
    m = ["", "Mount (issue 3); memfs = the in-memory FUSE floor, native = the source directory:", "",
         "| step | " + " | ".join(mtools) + " |", "|---|" + "---|" * len(mtools)]
    for label, step, key, fmt in [
        ("mount answers: s", "e-ready", "wall_s", "{:.2f}"),
        ("ls -lR latest tree, cold: s", "e-ls1", "wall_s", "{:.2f}"),
        ("ls -lR latest tree, warm: s", "e-ls2", "wall_s", "{:.2f}"),
        ("cp -a whole tree → tmpfs, cold mount: s", "e-cp", "wall_s", "{:.2f}"),
        ("differences after cp -a (rsync -c, -aHAX)", "e-cp-verify", "bytes", "{:.0f}"),
        ("mount process peak RSS: MiB", "e-rss", "rss_mib", "{:.0f}"),
    ]:
        m.append(f"| {label} | " + " | ".join(cell(t, step, key, fmt) for t in mtools) + " |")
    many = med("coffre", "e-1000", "wall_s")
    if many is not None:
        m.append(f"\nVault with 1000 points: `ls MOUNTPOINT/items/many` answered {many:.3f} s after `coffre mount` started.")
    c = lambda step: med("coffre", step, "wall_s")
    checks = []
    def chk(name, ok, detail):
        checks.append(f"- [{'x' if ok else ' '}] {name}: {detail}")
    if c("e-ls1") and med("native", "e-ls1", "wall_s"):
        r = c("e-ls1") / med("native", "e-ls1", "wall_s")
        chk("ls -lR (cold) ≤ 3× native", r <= 3, f"{r:.2f}×")
        rw = c("e-ls2") / med("native", "e-ls2", "wall_s")
        chk("ls -lR (warm) ≤ 3× native", rw <= 3, f"{rw:.2f}×")
    if c("e-ls1") and med("borg", "e-ls1", "wall_s"):
        r = c("e-ls1") / med("borg", "e-ls1", "wall_s")
        chk("ls -lR (cold) ≤ 0.1× borg", r <= 0.1, f"{r:.2f}×")
    if c("e-cp") and med("memfs", "e-cp", "wall_s"):
        r = c("e-cp") / med("memfs", "e-cp", "wall_s")
        chk("cp -a ≤ 1.5× the in-memory floor", r <= 1.5, f"{r:.2f}×")
    if c("e-cp") and med("borg", "e-cp", "wall_s"):
        r = med("borg", "e-cp", "wall_s") / c("e-cp")
        chk("cp -a ≥ 3× faster than borg's mount", r >= 3, f"{r:.2f}× faster")
    if c("e-cp") and med("restic", "e-cp", "wall_s"):
        r = med("restic", "e-cp", "wall_s") / c("e-cp")
        chk("cp -a ≥ 6× faster than restic's mount", r >= 6, f"{r:.2f}× faster")
    v = med("coffre", "e-cp-verify", "bytes")
    if v is not None:
        chk("the copy is identical to the source", v == 0, f"{v:.0f} differences")
    rss = med("coffre", "e-rss", "rss_mib")
    if rss is not None:
        chk("mount peak RSS ≤ 100 MiB", rss <= 100, f"{rss:.0f} MiB")
    if many is not None:
        chk("1000 points: ls items/X < 0.2 s after mount starts", many < 0.2, f"{many:.3f} s")
    m.append("\nTargets (mount issue), this run:")
    m.extend(checks)
    print("\n".join(m))

# ---- disk images (issue 4) ----
if any(r["step"].startswith("d") for r in rows):
    dt = [t for t in ("base", "coffre", "restic", "borg", "memfs") if any(r["tool"] == t and r["step"].startswith("d") for r in rows)]
    def v(t, step, key="wall_s"):
        return med(t, step, key)
    def f(x, fmt="{:.2f}"):
        return "–" if x is None else fmt.format(x)
    import os
    what = ("4 GiB sparse ext4 image of /usr (BENCH_IMAGE=usr)" if os.environ.get("BENCH_IMAGE") == "usr"
            else "4 GiB sparse ext4 image of the tree")
    out = ["", f"Disk image (issues 4, 13): {what}, then a changed copy:", "",
           "| step | " + " | ".join(dt) + " |", "|---|" + "---|" * len(dt)]
    cat_mbs = {t: (4294.967296 / v(t, "d-cat")) if v(t, "d-cat") else None for t in dt}
    for label, fn in [
        ("d1 initial image backup: wall s", lambda t: f(v(t, "d1"))),
        ("d1 repo MB after", lambda t: f(v(t, "d1", "bytes") and v(t, "d1", "bytes") / 1e6, "{:.1f}")),
        ("d2 incremental image backup: wall s", lambda t: f(v(t, "d2"))),
        ("d2 repo MB added", lambda t: f(v(t, "d2", "bytes") and v(t, "d2", "bytes") / 1e6, "{:.1f}")),
        ("random 4 KiB reads from the mount, cold: p50 µs", lambda t: f(v(t, "d-rand50"), "{:.0f}")),
        ("random 4 KiB reads, cold: p99 µs", lambda t: f(v(t, "d-rand99"), "{:.0f}")),
        ("random reads: mismatches", lambda t: f(v(t, "d-rand50", "bytes"), "{:.0f}")),
        ("cat of the image from the mount: MB/s", lambda t: f(cat_mbs[t], "{:.0f}")),
    ]:
        out.append(f"| {label} | " + " | ".join(fn(t) for t in dt) + " |")
    rs, cp = v("coffre", "d-restore"), v("cp", "d-cp-sparse")
    if rs is not None:
        out.append(f"\n`coffre-restore disk` to tmpfs: {rs:.2f} s; `cp --sparse=always` of the same image: "
                   f"{f(cp)} s; identical: {'yes' if v('coffre', 'd-restore-same', 'bytes') == 1 else 'NO'}; "
                   f"allocated blocks {f(v('coffre', 'd-restore-blocks', 'bytes'), '{:.0f}')} vs source "
                   f"{f(v('coffre', 'd-source-blocks', 'bytes'), '{:.0f}')}.")
    checks = []
    def chk(name, ok, detail):
        checks.append(f"- [{'x' if ok else ' '}] {name}: {detail}")
    if v("coffre", "d1") and v("restic", "d1"):
        r = v("coffre", "d1") / v("restic", "d1")
        chk("initial image backup ≤ 0.3× restic", r <= 0.3, f"{r:.2f}×")
    if v("coffre", "d2") and v("restic", "d2"):
        r = v("coffre", "d2") / v("restic", "d2")
        chk("incremental ≤ 0.25× restic's wall", r <= 0.25, f"{r:.2f}×")
        nb = v("coffre", "d2", "bytes") / max(1, v("restic", "d2", "bytes"))
        chk("incremental new bytes ≤ 0.5× restic's", nb <= 0.5, f"{nb:.2f}×")
    if cat_mbs.get("coffre") and cat_mbs.get("memfs"):
        r = cat_mbs["coffre"] / cat_mbs["memfs"]
        chk("cat from the mount ≥ 0.7× the floor", r >= 0.7, f"{r:.2f}×")
    if cat_mbs.get("coffre") and cat_mbs.get("borg"):
        r = cat_mbs["coffre"] / cat_mbs["borg"]
        chk("cat from the mount ≥ 2.5× borg's", r >= 2.5, f"{r:.2f}×")
    if v("coffre", "d-rand50"):
        chk("random 4 KiB read p50 ≤ 150 µs", v("coffre", "d-rand50") <= 150, f"{v('coffre', 'd-rand50'):.0f} µs")
    if rs is not None and cp:
        chk("coffre-restore disk ≤ 3× cp --sparse=always", rs / cp <= 3, f"{rs / cp:.2f}×")
    if v("coffre", "d1") and v("restic", "d1"):
        r = v("coffre", "d1") / v("restic", "d1")
        chk("issue 13: initial image backup ≤ 0.35× restic's wall", r <= 0.35, f"{r:.2f}×")
    if v("coffre", "d1", "bytes") and v("borg", "d1", "bytes"):
        r = v("coffre", "d1", "bytes") / v("borg", "d1", "bytes")
        chk("issue 13: initial image backup adds ≤ borg's repository", r <= 1, f"{r:.3f}× borg")
    if v("coffre", "d2", "bytes") and v("restic", "d2", "bytes"):
        r = v("coffre", "d2", "bytes") / v("restic", "d2", "bytes")
        chk("issue 13: incremental bytes ≤ 0.2× restic's", r <= 0.2, f"{r:.2f}×")
    if v("coffre", "d-rand50"):
        chk("issue 13: random 4 KiB read p50 ≤ 100 µs", v("coffre", "d-rand50") <= 100, f"{v('coffre', 'd-rand50'):.0f} µs")
    out.append("\nTargets (disk issues), this run:")
    out.extend(checks)
    print("\n".join(out))
