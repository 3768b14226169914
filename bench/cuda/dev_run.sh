#!/bin/sh
# dev_run.sh - one device call for the compressed-KV tensor-core kernels: build, the GPU
# tests, build/bench_attn on the compressed pairs, optionally a variant build of
# attend_mma.o (VARIANT="-D...": its flags through NVCC_APPEND_FLAGS), SDPA-flash on the
# same shapes (SDPA=1) and one Nsight Compute profile at batch 8, 32k (NCU=1).
# VARIANT2: a second variant build (bench_variant2.txt); VTESTS=1 runs the GPU tests on
# the first variant too (tests_variant.log). NCU_SRC=1: a per-instruction profile of the
# default build (ncu_source.csv.gz: SASS with execution counts and stall samples).
# PAGED=1: the pairs over 16-, 32- and 64-token pages too (bench_attn --paged).
# Logs under $OUT (else build/dev-run); a short summary is printed last.
set -u
OUT=${OUT:-build/dev-run}
PAIRS=${PAIRS:-rvq1x2/mse2,rabitq1/mse2,rvq1x2/mse4,rabitq1/mse4}
mkdir -p "$OUT"
NPROC=$(nproc 2>/dev/null || echo 4)
CUDA_HOME=$(dirname "$(dirname "$(command -v nvcc)")")
t0=$(date +%s)
stamp() { echo "[$(($(date +%s) - t0)) s] $*"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem --format=csv,noheader | tee "$OUT/env.txt"
bench_bin() {
  cc -std=c11 -O2 -Wall -Wextra -Werror -D_DEFAULT_SOURCE -Iinclude -I"$CUDA_HOME/include" \
    bench/cuda/bench_attn.c build/libkvq.a -L"$CUDA_HOME/lib64" -Wl,-rpath,"$CUDA_HOME/lib64" \
    -lcudart -lm -pthread -o "$1"
}
make -j"$NPROC" >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
bench_bin build/bench_attn >>"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
stamp "build done"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  make -j"$NPROC" test TESTS=cuda_ >"$OUT/tests.log" 2>&1
  stamp "tests: $(grep -E 'passed|failed' "$OUT/tests.log" | tail -2 | tr '\n' ' ')"
  grep -E "FAIL|error|relative" "$OUT/tests.log" | head -20
fi
./build/bench_attn --pair "$PAIRS" ${PAGED:+--paged} >"$OUT/bench.txt" 2>&1
stamp "bench done"
if [ "${NCU:-0}" = 1 ]; then
  NCU_BIN=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  timeout 150 "$NCU_BIN" --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis \
    --section Occupancy --section WarpStateStats --section LaunchStats --section InstructionStats \
    --section ComputeWorkloadAnalysis -k regex:attend_bits -c 1 \
    ./build/bench_attn --profile "${NCU_KEY:-turboquant_rvq:bits=1,residuals=2}" "${NCU_VALUE:-turboquant_mse:bits=2}" \
    >"$OUT/ncu.txt" 2>&1
  stamp "ncu done"
fi
if [ "${NCU_SRC:-0}" = 1 ]; then
  # per-instruction execution counts and stall samples of the default build (SASS), the
  # opcode mix, and the kernel's SASS: ncu_source.csv.gz, sass.txt.gz
  NCU_BIN=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  timeout 150 "$NCU_BIN" --clock-control none --section SourceCounters --section WarpStateStats \
    --section InstructionStats -k regex:attend_bits -c 1 -f -o build/ncu_src \
    ./build/bench_attn --profile "${NCU_KEY:-turboquant_rvq:bits=1,residuals=2}" "${NCU_VALUE:-turboquant_mse:bits=2}" \
    >"$OUT/ncu_src.log" 2>&1
  "$NCU_BIN" -i build/ncu_src.ncu-rep --page source --csv --print-source sass 2>&1 | gzip >"$OUT/ncu_source.csv.gz"
  "$NCU_BIN" -i build/ncu_src.ncu-rep --page details --print-details all >>"$OUT/ncu_src.log" 2>&1
  cuobjdump -sass build/src/cuda/attend_mma.o 2>&1 | gzip >"$OUT/sass.txt.gz"
  stamp "ncu source done"
fi
vi=0
for V in "${VARIANT:-}" "${VARIANT2:-}"; do
  vi=$((vi + 1))
  [ -n "$V" ] || continue
  sfx=$([ $vi = 1 ] && echo "" || echo $vi)
  rm -f build/src/cuda/attend_mma.o
  NVCC_APPEND_FLAGS="$V" make -j"$NPROC" >>"$OUT/build.log" 2>&1 && bench_bin build/bench_attn_v >>"$OUT/build.log" 2>&1 &&
    ./build/bench_attn_v --pair "${VPAIRS:-$PAIRS}" ${PAGED:+--paged} >"$OUT/bench_variant$sfx.txt" 2>&1
  if [ $vi = 1 ] && [ "${VTESTS:-0}" = 1 ]; then
    NVCC_APPEND_FLAGS="$V" make -j"$NPROC" test TESTS=cuda_ >"$OUT/tests_variant.log" 2>&1
    stamp "variant tests: $(grep -E 'passed|failed' "$OUT/tests_variant.log" | tail -1)"
  fi
  stamp "variant ($V) done"
done
if [ "${SDPA:-0}" = 1 ]; then
  PYTHONUNBUFFERED=1 timeout 200 python3 bench/cuda/sdpa.py --flash >"$OUT/sdpa.txt" 2>&1
  stamp "sdpa done"
fi
python3 bench/cuda/summary.py dev "$OUT"
