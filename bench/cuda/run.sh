#!/bin/sh
# run.sh - build, check and time kvq's CUDA kernels on a GPU machine, then PyTorch
# SDPA (FlashAttention) on the same shapes; a summary table comes last.
# Usage: bench/cuda/run.sh [--quick]   (full logs under $OUT, else under build/bench-cuda)
set -u
OUT=${OUT:-build/bench-cuda}
mkdir -p "$OUT"
NPROC=$(nproc 2>/dev/null || echo 4)
{
  echo "== $(date -u '+%Y-%m-%d %H:%M UTC')  $(uname -m)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1
  nvcc --version | tail -1
} | tee "$OUT/env.txt"

make -j"$NPROC" >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
CUDA_HOME=$(dirname "$(dirname "$(command -v nvcc)")")
cc -std=c11 -O2 -Wall -Wextra -Werror -D_DEFAULT_SOURCE -Iinclude -I"$CUDA_HOME/include" \
  bench/cuda/bench_attn.c build/libkvq.a -L"$CUDA_HOME/lib64" -Wl,-rpath,"$CUDA_HOME/lib64" \
  -lcudart -lm -pthread -o build/bench_attn >>"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
make test TESTS=cuda_ >"$OUT/tests.log" 2>&1
echo "tests: $(tail -1 "$OUT/tests.log")"
grep -E "FAIL|error" "$OUT/tests.log" | head -20

./build/bench_attn "$@" 2>&1 | tee "$OUT/bench_attn.txt"
# where the time goes: one attention and one encode launch under Nsight Compute
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [ -n "$NCU" ]; then
  for k in attend_mma encode_rows; do
    timeout 200 "$NCU" --section SpeedOfLight --section Occupancy --section WarpStateStats \
      --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section LaunchStats \
      -k regex:$k -c 1 ./build/bench_attn --profile >"$OUT/ncu_$k.txt" 2>&1
    grep -E "^  [a-z_]+.*\(|Duration|Memory Throughput|DRAM Throughput|Compute \(SM\) Th|Issue Slots Busy|Achieved Occupancy|Registers Per|Executed Ipc A|No Eligible|L1/TEX Hit|Mem Busy" "$OUT/ncu_$k.txt" | head -20
  done
fi
PYTHONUNBUFFERED=1 python3 bench/cuda/sdpa.py "$@" 2>&1 | tee "$OUT/sdpa.txt"

python3 - "$OUT" <<'PY'
import re, sys
out = sys.argv[1]
def kv(line):
    return dict(re.findall(r"(\w+)=(\S+)", line))
ours = [kv(l) for l in open(f"{out}/bench_attn.txt") if l.startswith("ATTN") and "us=" in l]
sdpa = {(d["batch"], d["ctx"]): d for d in (kv(l) for l in open(f"{out}/sdpa.txt")
        if l.startswith("SDPA ") and "us=" in l)}
copy = [kv(l) for l in open(f"{out}/bench_attn.txt") if l.startswith("COPY")]
lines = []
if copy:
    lines.append(f"copy ceiling {float(copy[0]['GBps']):.0f} GB/s")
for l in open(f"{out}/bench_attn.txt"):
    if l.startswith("ENCODE ") or l.startswith("ENCODE_WARP"):
        d = kv(l)
        tag = " (warp/vector)" if l.startswith("ENCODE_WARP") else ""
        lines.append(f"encode {d['method'] + tag:<48} {float(d['GBps']):7.0f} GB/s {float(d['pct_copy']):5.1f}% of copy")
lines.append(f"{'pair':<14}{'batch':>6}{'ctx':>8}{'us':>10}{'GB/s':>8}{'%copy':>7}{'sdpa us':>10}{'speedup':>9}")
for d in ours:
    s = sdpa.get((d["batch"], d["ctx"]))
    su = float(s["us"]) if s else float("nan")
    lines.append(f"{d['pair']:<14}{d['batch']:>6}{d['ctx']:>8}{float(d['us']):>10.1f}"
                 f"{float(d['GBps']):>8.0f}{float(d['pct_copy']):>7.1f}{su:>10.1f}{su / float(d['us']):>9.2f}")
open(f"{out}/summary.txt", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
