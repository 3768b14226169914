#!/bin/sh
# dev_run.sh - one device call for the attention kernels: build, the GPU tests,
# build/bench_attn on the chosen pairs, optionally variant builds, SDPA-flash on the same
# shapes (SDPA=1) and one Nsight Compute profile (NCU=1).
# PAIRS: the pairs timed (default: the compressed ones); BENCH_ARGS: more bench_attn
# arguments for every build (--batches 1,8 --ctxs 32768, say).
# Variants: VARIANT, VARIANT2 .. VARIANT6, each either compiler flags ("-D...", through
# NVCC_APPEND_FLAGS) or "src:DIR" (the .cu files of DIR replace src/cuda's for that build);
# VOBJS: the objects under build/src/cuda rebuilt for each (default attend_mma); VPAIRS:
# the pairs a variant times; VBENCH_ARGS: bench_attn arguments of variants 2-6 (default
# BENCH_ARGS); the logs are bench_variant.txt, bench_variant2.txt, ...
# VTESTS=1 runs the GPU tests on the first variant too (tests_variant.log).
# NCU=1: one profile (NCU_K: kernel regex, default attend_bits; NCU_KEY / NCU_VALUE: the
# pair; NCU_SHAPE: "BATCH CTX", default 8 32768; NCU_COUNT: kernels profiled, default 1).
# NCU_SRC=1: a per-instruction profile of the default build (ncu_source.csv.gz: SASS with
# execution counts and stall samples). SASS=1: the SASS of VOBJS (sass.txt.gz).
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
VOBJS=${VOBJS:-attend_mma}
./build/bench_attn --pair "$PAIRS" ${PAGED:+--paged} ${BENCH_ARGS:-} >"$OUT/bench.txt" 2>&1
stamp "bench done"
if [ "${NCU:-0}" = 1 ]; then
  NCU_BIN=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  timeout 150 "$NCU_BIN" --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis \
    --section Occupancy --section WarpStateStats --section LaunchStats --section InstructionStats \
    --section ComputeWorkloadAnalysis --section SchedulerStats -k "regex:${NCU_K:-attend_bits}" -c "${NCU_COUNT:-1}" \
    ./build/bench_attn --profile "${NCU_KEY:-turboquant_rvq:bits=1,residuals=2}" "${NCU_VALUE:-turboquant_mse:bits=2}" \
    ${NCU_SHAPE:-8 32768} >"$OUT/ncu.txt" 2>&1
  stamp "ncu done"
fi
if [ "${NCU_SRC:-0}" = 1 ]; then
  # per-instruction execution counts and stall samples of the default build (SASS), the
  # opcode mix, and the kernel's SASS: ncu_source.csv.gz, sass.txt.gz
  NCU_BIN=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  timeout 150 "$NCU_BIN" --clock-control none --section SourceCounters --section WarpStateStats \
    --section InstructionStats -k "regex:${NCU_K:-attend_bits}" -c 1 -f -o build/ncu_src \
    ./build/bench_attn --profile "${NCU_KEY:-turboquant_rvq:bits=1,residuals=2}" "${NCU_VALUE:-turboquant_mse:bits=2}" \
    ${NCU_SHAPE:-8 32768} >"$OUT/ncu_src.log" 2>&1
  "$NCU_BIN" -i build/ncu_src.ncu-rep --page source --csv --print-source sass 2>&1 | gzip >"$OUT/ncu_source.csv.gz"
  "$NCU_BIN" -i build/ncu_src.ncu-rep --page details --print-details all >>"$OUT/ncu_src.log" 2>&1
  stamp "ncu source done"
fi
if [ "${SASS:-0}" = 1 ] || [ "${NCU_SRC:-0}" = 1 ]; then
  for o in $VOBJS; do cuobjdump -sass "build/src/cuda/$o.o"; done 2>&1 | gzip >"$OUT/sass.txt.gz"
fi
vi=0
for V in "${VARIANT:-}" "${VARIANT2:-}" "${VARIANT3:-}" "${VARIANT4:-}" "${VARIANT5:-}" "${VARIANT6:-}"; do
  vi=$((vi + 1))
  [ -n "$V" ] || continue
  sfx=$([ $vi = 1 ] && echo "" || echo $vi)
  flags=$V
  case "$V" in
  src:*)
    flags=""
    mkdir -p build/dev-run-src
    for f in "${V#src:}"/*.cu; do
      cp "src/cuda/$(basename "$f")" build/dev-run-src/ && cp "$f" "src/cuda/$(basename "$f")"
    done ;;
  esac
  for o in $VOBJS; do rm -f "build/src/cuda/$o.o"; done
  NVCC_APPEND_FLAGS="$flags" make -j"$NPROC" >>"$OUT/build.log" 2>&1 && bench_bin build/bench_attn_v >>"$OUT/build.log" 2>&1 &&
    ./build/bench_attn_v --pair "${VPAIRS:-$PAIRS}" ${PAGED:+--paged} \
      $([ $vi = 1 ] && echo "${BENCH_ARGS:-}" || echo "${VBENCH_ARGS:-${BENCH_ARGS:-}}") >"$OUT/bench_variant$sfx.txt" 2>&1
  if [ $vi = 1 ] && [ "${VTESTS:-0}" = 1 ]; then
    NVCC_APPEND_FLAGS="$flags" make -j"$NPROC" test TESTS=cuda_ >"$OUT/tests_variant.log" 2>&1
    stamp "variant tests: $(grep -E 'passed|failed' "$OUT/tests_variant.log" | tail -1)"
  fi
  case "$V" in
  src:*)
    cp build/dev-run-src/*.cu src/cuda/
    for o in $VOBJS; do rm -f "build/src/cuda/$o.o"; done ;;
  esac
  stamp "variant $vi ($V) done"
done
if [ "${SDPA:-0}" = 1 ]; then
  PYTHONUNBUFFERED=1 timeout 200 python3 bench/cuda/sdpa.py --flash >"$OUT/sdpa.txt" 2>&1
  stamp "sdpa done"
fi
python3 bench/cuda/summary.py dev "$OUT"
