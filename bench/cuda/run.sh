#!/bin/sh
# run.sh - build, check and time kvq's CUDA kernels on a GPU machine, then PyTorch
# SDPA (FlashAttention and memory-efficient backends) on the same shapes; a summary
# table comes last. Usage: bench/cuda/run.sh [--quick]
#   NCU=1   also profile the attention kernels under Nsight Compute
#   SKIP_TESTS=1 / SKIP_SDPA=1   leave those steps out
# Full logs go under $OUT (else build/bench-cuda).
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
echo "build done $(date -u +%H:%M:%S)"
# instruction mix of the attention kernels (SASS), for the profile notes
if [ "${SASS:-0}" = 1 ] && command -v cuobjdump >/dev/null; then
  for f in attend_mma attend_base; do cuobjdump -sass "build/src/cuda/$f.o" >"$OUT/$f.sass" 2>&1; done
fi
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  make test TESTS=cuda_ >"$OUT/tests.log" 2>&1
  echo "tests: $(tail -1 "$OUT/tests.log")  $(date -u +%H:%M:%S)"
  grep -E "^ +FAIL|^ +tests/" "$OUT/tests.log" | head -20
fi

./build/bench_attn "$@" >"$OUT/bench_attn.txt" 2>&1
echo "bench done $(date -u +%H:%M:%S)"; grep -E "error|Error" "$OUT/bench_attn.txt" | head
if [ "${NCU:-0}" = 1 ]; then
  NCU_BIN=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  if [ -n "$NCU_BIN" ]; then
    for spec in "attend_mma turboquant_rvq:bits=1,residuals=2 turboquant_mse:bits=2" \
                "attend_base fp16 fp16" "attend_base q4_0 q4_0"; do
      set -- $spec
      tag=$(echo "$1_$2_$3" | tr -c 'A-Za-z0-9_\n' '_')
      timeout 120 "$NCU_BIN" --clock-control none --section SpeedOfLight --section Occupancy \
        --section WarpStateStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
        --section LaunchStats --section InstructionStats -k regex:$1 -c 1 \
        ./build/bench_attn --profile "$2" "$3" >"$OUT/ncu.txt.tmp" 2>&1
      echo "== $spec" >>"$OUT/ncu.txt"; cat "$OUT/ncu.txt.tmp" >>"$OUT/ncu.txt"; rm -f "$OUT/ncu.txt.tmp"
    done
    grep -E "^== |Duration|DRAM Throughput|Compute \(SM\) Th|Issue Slots Busy|Achieved Occupancy|Registers Per|Executed Ipc A|No Eligible" "$OUT/ncu.txt" | head -40
  fi
fi
if [ "${SKIP_SDPA:-0}" != 1 ]; then
  PYTHONUNBUFFERED=1 python3 bench/cuda/sdpa.py "$@" >"$OUT/sdpa.txt" 2>&1
  echo "sdpa done $(date -u +%H:%M:%S)"; tail -2 "$OUT/sdpa.txt"
fi

python3 bench/cuda/summary.py run "$OUT"
