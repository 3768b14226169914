#!/bin/sh
# chan_ab.sh - one device call for the channel-key (preset) attention kernel: builds this
# tree and a base tree (BASE, a directory holding an unpacked `git archive` of the base
# commit), runs the GPU tests of this tree, times build/bench_chan of base and new
# alternated (base, new, base, new: each cell the better of two runs, each run a median
# of 9 CUDA graphs of 10 calls), SDPA-flash on the same shapes (bench/cuda/sdpa.py), and
# optionally one Nsight Compute profile of the new kernel (NCU=1; NCU_ARGS: bench_chan
# arguments of the profiled shape, default q4 at batch 8, 32k; NCU_TREE: the tree whose
# build is profiled, default this one, say "$MID").
# CTXS / BATCHES / PRESETS: the cells (defaults 4096,32768,131072 / 1,8,32 / q4,q3,q2);
# CELLS="ARGS;ARGS..." instead: bench_chan argument sets, run in turn.
# MID: a third tree (an intermediate step), built and timed once per round (mid*.txt);
# MID_FLAGS: nvcc flags of that build (NVCC_APPEND_FLAGS, say -DCHAN_MMA=0); MID_TESTS=1:
# its `make test TESTS=cuda_` too (mid_tests.log), and its bench in both rounds.
# XTEST_DIR / XTEST: a tree whose `make test TESTS=$XTEST` is run too (xtest.log), say one
# with a fix reverted, to show the test catches it.
# Logs under $OUT (else build/chan-ab); the before/after table (CHANSPEED lines) last.
set -u
OUT=${OUT:-build/chan-ab}
BASE=${BASE:?BASE: directory of the base tree}
CTXS=${CTXS:-4096,32768,131072}
BATCHES=${BATCHES:-1,8,32}
PRESETS=${PRESETS:-q4,q3,q2}
mkdir -p "$OUT"
NPROC=$(nproc 2>/dev/null || echo 4)
CUDA_HOME=$(dirname "$(dirname "$(command -v nvcc)")")
t0=$(date +%s)
stamp() { echo "[$(($(date +%s) - t0)) s] $*"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem --format=csv,noheader | tee "$OUT/env.txt"
bench_bin() { # tree
  cc -std=c11 -O2 -Wall -Wextra -Werror -D_DEFAULT_SOURCE -I"$1/include" -I"$CUDA_HOME/include" \
    "$1/bench/cuda/bench_chan.c" "$1/build/libkvq.a" -L"$CUDA_HOME/lib64" -Wl,-rpath,"$CUDA_HOME/lib64" \
    -lcudart -lm -pthread -o "$1/build/bench_chan"
}
J=$((NPROC / 4 > 1 ? NPROC / 4 : 1))
(cd "$BASE" && make -j"$J" build/libkvq.a >"$OUT/build_base.log" 2>&1) &
[ -n "${MID:-}" ] && (cd "$MID" && NVCC_APPEND_FLAGS="${MID_FLAGS:-}" make -j"$J" \
  $([ "${MID_TESTS:-0}" = 1 ] && echo all || echo build/libkvq.a) >"$OUT/build_mid.log" 2>&1) &
[ -n "${XTEST_DIR:-}" ] && (cd "$XTEST_DIR" && make -j"$J" all >"$OUT/build_xtest.log" 2>&1) &
make -j"$J" all >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
wait
bench_bin . >>"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
bench_bin "$BASE" >>"$OUT/build_base.log" 2>&1 || { tail -30 "$OUT/build_base.log"; exit 1; }
[ -n "${MID:-}" ] && { bench_bin "$MID" >>"$OUT/build_mid.log" 2>&1 || { tail -30 "$OUT/build_mid.log"; exit 1; }; }
stamp "build done"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  make -j"$NPROC" test TESTS=cuda_ >"$OUT/tests.log" 2>&1
  stamp "tests: $(grep -E 'passed|failed' "$OUT/tests.log" | tail -1)"
  grep -E "FAIL|relative" "$OUT/tests.log" | head -20
fi
if [ -n "${MID:-}" ] && [ "${MID_TESTS:-0}" = 1 ]; then
  (cd "$MID" && NVCC_APPEND_FLAGS="${MID_FLAGS:-}" make -j"$NPROC" test TESTS=cuda_) >"$OUT/mid_tests.log" 2>&1
  stamp "mid tests (${MID_FLAGS:-}): $(grep -E 'passed|failed' "$OUT/mid_tests.log" | tail -1)"
  grep -E "FAIL|relative" "$OUT/mid_tests.log" | head -20
fi
if [ -n "${XTEST_DIR:-}" ]; then
  (cd "$XTEST_DIR" && make -j"$NPROC" test TESTS="$XTEST") >"$OUT/xtest.log" 2>&1
  stamp "xtest ($XTEST in $XTEST_DIR): $(grep -E 'passed|failed' "$OUT/xtest.log" | tail -1)"
  grep -E "FAIL|splits|relative" "$OUT/xtest.log" | head -6
fi
CELLS=${CELLS:-"--presets $PRESETS --batches $BATCHES --ctxs $CTXS"}
run_cells() { # binary log
  : >"$2"
  echo "$CELLS" | tr ';' '\n' | while read -r a; do [ -n "$a" ] && "$1" $a >>"$2" 2>&1; done
}
for i in 1 2; do
  run_cells "$BASE/build/bench_chan" "$OUT/base$i.txt"
  run_cells ./build/bench_chan "$OUT/new$i.txt"
  [ -n "${MID:-}" ] && { [ "$i" = 1 ] || [ "${MID_TESTS:-0}" = 1 ]; } && run_cells "$MID/build/bench_chan" "$OUT/mid$i.txt"
  stamp "bench round $i done"
done
if [ "${SDPA:-1}" = 1 ]; then
  PYTHONUNBUFFERED=1 timeout 200 python3 bench/cuda/sdpa.py --flash >"$OUT/sdpa.txt" 2>&1
  stamp "sdpa done"
fi
if [ "${NCU:-0}" = 1 ]; then
  NCU_BIN=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  timeout 150 "$NCU_BIN" --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis \
    --section MemoryWorkloadAnalysis_Tables --section Occupancy --section WarpStateStats --section LaunchStats \
    --section InstructionStats --section ComputeWorkloadAnalysis --section SchedulerStats \
    -k "regex:chan_attend" -c 1 "${NCU_TREE:-.}/build/bench_chan" ${NCU_ARGS:---presets q4 --batches 8 --ctxs 32768} \
    >"$OUT/ncu.txt" 2>&1
  stamp "ncu done"
  # per-instruction execution counts and stall samples (SASS) of the same launch, and the SASS
  timeout 150 "$NCU_BIN" --clock-control none --section SourceCounters --section WarpStateStats \
    -k "regex:chan_attend" -c 1 -f -o build/ncu_src "${NCU_TREE:-.}/build/bench_chan" ${NCU_ARGS:---presets q4 --batches 8 --ctxs 32768} \
    >"$OUT/ncu_src.log" 2>&1
  "$NCU_BIN" -i build/ncu_src.ncu-rep --page source --csv --print-source sass 2>&1 | gzip >"$OUT/ncu_source.csv.gz"
  cuobjdump -sass "${NCU_TREE:-.}/build/src/cuda/chan.o" 2>&1 | gzip >"$OUT/sass.txt.gz"
  stamp "ncu source done"
  grep -E "Duration|DRAM Throughput|Compute \(SM\) Th|Issue Slots Busy|Achieved Occupancy|Registers Per|Executed Ipc A|No Eligible|Shared Memory|Theoretical Occ|Block Limit" "$OUT/ncu.txt" | head -30
fi
python3 - "$OUT" <<'EOF'
import glob, os, re, sys
out = sys.argv[1]
def cells(pattern):
    best, copy = {}, []
    for f in sorted(glob.glob(os.path.join(out, pattern))):
        for line in open(f):
            m = re.match(r"COPY .*GBps=([\d.]+)", line)
            if m:
                copy.append(float(m.group(1)))
            m = re.match(r"CHAN preset=(\S+) batch=(\d+) ctx=(\d+) .* us=([\d.]+) GBps=([\d.]+)", line)
            if m:
                k = (m.group(1), int(m.group(2)), int(m.group(3)))
                us = float(m.group(4))
                if k not in best or us < best[k][0]:
                    best[k] = (us, float(m.group(5)))
    return best, copy
base, cb = cells("base*.txt")
new, cn = cells("new*.txt")
mid, cm = cells("mid*.txt")
copy = sorted(cb + cn)[len(cb + cn) // 2] if cb + cn else float("nan")
sdpa = {}
if os.path.exists(os.path.join(out, "sdpa.txt")):
    for line in open(os.path.join(out, "sdpa.txt")):
        m = re.match(r"SDPA batch=(\d+) ctx=(\d+) backend=flash us=([\d.]+)", line)
        if m:
            sdpa[(int(m.group(1)), int(m.group(2)))] = float(m.group(3))
print("# copy ceiling (median of the runs) %.1f GB/s" % copy)
print("# preset batch ctx base_us [mid_us] new_us GBps pct_copy x_sdpa_base x_sdpa_new speedup")
for k in sorted(new, key=lambda k: (["q4", "q3", "q2"].index(k[0]) if k[0] in ("q4", "q3", "q2") else 9, k[1], k[2])):
    us, gbs = new[k]
    b = base.get(k, (float("nan"), 0))[0]
    s = sdpa.get((k[1], k[2]), float("nan"))
    m = (" mid_us=%.2f" % mid[k][0]) if k in mid else ""
    print("CHANSPEED preset=%s batch=%d ctx=%d base_us=%.2f%s us=%.2f GBps=%.1f pct_copy=%.1f x_sdpa_base=%.2f x_sdpa=%.2f speedup=%.2f"
          % (k[0], k[1], k[2], b, m, us, gbs, 100 * gbs / copy, s / b, s / us, b / us))
EOF
