#!/usr/bin/env python3
"""summary.py - the summary of a GPU run's logs (bench/cuda/run.sh, dev_run.sh).

    summary.py run OUT   build/bench_attn's output OUT/bench_attn.txt (+ OUT/sdpa.txt):
                         every figure against SDPA's flash and efficient backends, encode,
                         paged and prefill lines; also written to OUT/summary.txt
    summary.py dev OUT   OUT/bench.txt and its variant builds' (+ OUT/sdpa.txt, OUT/ncu.txt):
                         attention against SDPA-flash and the profile's key lines
"""
import os
import re
import sys

NAN = float("nan")


def kv(line):
    return dict(re.findall(r"(\w+)=(\S+)", line))


def read_sdpa(out):
    sdpa = {}
    path = f"{out}/sdpa.txt"
    if os.path.exists(path):
        for line in open(path):
            if line.startswith("SDPA ") and "us=" in line:
                d = kv(line)
                sdpa[(d["backend"], d["batch"], d["ctx"])] = float(d["us"])
    return sdpa


def run_summary(out):
    sdpa = read_sdpa(out)
    bench = open(f"{out}/bench_attn.txt").read().splitlines()
    ours = [kv(l) for l in bench if l.startswith("ATTN") and "us=" in l]
    copy = [kv(l) for l in bench if l.startswith("COPY")]
    lines = []
    if copy:
        lines.append(f"copy ceiling {float(copy[0]['GBps']):.0f} GB/s")
    for l in bench:
        if l.startswith("ENCODE ") or l.startswith("ENCODE_WARP"):
            d = kv(l)
            tag = " (warp/vector)" if l.startswith("ENCODE_WARP") else ""
            lines.append(f"encode {d['method'] + tag:<48} {float(d['GBps']):7.0f} GB/s "
                         f"{float(d['pct_copy']):5.1f}% of copy")
    lines.append(f"{'pair':<14}{'batch':>6}{'ctx':>8}{'us':>10}{'GB/s':>8}{'%copy':>7}{'flash us':>10}"
                 f"{'eff us':>10}{'vs flash':>9}{'vs eff':>8}")
    for d in ours:
        f = sdpa.get(("flash", d["batch"], d["ctx"]), NAN)
        e = sdpa.get(("efficient", d["batch"], d["ctx"]), NAN)
        u = float(d["us"])
        lines.append(f"{d['pair']:<14}{d['batch']:>6}{d['ctx']:>8}{u:>10.1f}{float(d['GBps']):>8.0f}"
                     f"{float(d['pct_copy']):>7.1f}{f:>10.1f}{e:>10.1f}{f / u:>9.2f}{e / u:>8.2f}")
    lines += [l for l in bench if l.startswith("PAGED") or l.startswith("PREFILL")]
    open(f"{out}/summary.txt", "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


NCU_KEYS = (r"Duration|DRAM Throughput|Compute \(SM\) Th|Issue Slots Busy|Achieved Occupancy|"
            r"Registers Per|Executed Ipc A|No Eligible|Memory Throughput|Executed Instructions  |"
            r"Theoretical Occupancy|Block Limit|Context \d+, Stream|Warp Cycles Per Issued|One or More Eligible")


def dev_summary(out):
    sdpa = read_sdpa(out)
    for name in ["bench.txt", "bench_variant.txt"] + [f"bench_variant{i}.txt" for i in range(2, 7)]:
        path = f"{out}/{name}"
        if not os.path.exists(path):
            continue
        print("==", name)
        for l in open(path):
            if l.startswith("COPY"):
                print(f"copy {float(kv(l)['GBps']):.0f} GB/s")
            elif l.startswith("ATTN") and "us=" in l:
                d = kv(l)
                f = sdpa.get(("flash", d["batch"], d["ctx"]))
                vs = f"{f / float(d['us']):6.2f}" if f else "     -"
                print(f"{d['pair']:<14}{d['batch']:>4}{d['ctx']:>8}{float(d['us']):>10.1f}"
                      f"{float(d['GBps']):>8.0f}{float(d['pct_copy']):>7.1f}{vs}")
            elif l.startswith("PAGED") and "us=" in l:
                d = kv(l)
                print(f"{d['pair']:<14}{d['batch']:>4}{d['ctx']:>8}{float(d['us']):>10.1f}"
                      f"{float(d['GBps']):>8.0f}{float(d['pct_copy']):>7.1f}  page {d['page']}")
            elif "rror" in l:
                print(l.rstrip())
    if os.path.exists(f"{out}/ncu.txt"):
        for l in open(f"{out}/ncu.txt"):
            if re.search(NCU_KEYS, l):
                print(l.rstrip())


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("run", "dev"):
        sys.exit(__doc__)
    (run_summary if sys.argv[1] == "run" else dev_summary)(sys.argv[2])
