#!/bin/sh
# hf_gpu.sh - on a GPU machine: build libkvq with CUDA, run kvq.hf's GPU test
# (python/tests/test_hf.py -k cuda), then bench/hf_gpu.py (KVQCache vs DynamicCache in
# generate at 8k-32k context, batch 1 and 16). Logs and the JSON lines go under $OUT
# (else build/hf-gpu). Arguments go to hf_gpu.py (--budget-s, --ctx, --models, ...).
# Python packages the machine lacks (gguf, to read models/*.gguf when they are there)
# are installed from wheels in .whl-hf/ when that folder exists.
# The whole run stops within HF_GPU_DEADLINE seconds (420): the benchmark gets what the
# build and the test leave, its --budget-s a minute less (a later --budget-s wins).
set -u
T_START=$(date +%s)
OUT=${OUT:-build/hf-gpu}
mkdir -p "$OUT"
NPROC=$(nproc 2>/dev/null || echo 4)
{
  echo "== $(date -u '+%Y-%m-%d %H:%M UTC')  $(uname -m)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  nvcc --version 2>&1 | tail -1
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
} 2>&1 | tee "$OUT/env.txt"

if ls .whl-hf/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/hf-site .whl-hf/*.whl >"$OUT/pip.log" 2>&1 &&
    export PYTHONPATH=/tmp/hf-site${PYTHONPATH:+:$PYTHONPATH} ||
    echo "hf_gpu.sh: wheels from .whl-hf/ not installed (see pip.log); going on without them"
fi

t0=$(date +%s)
make -j"$NPROC" lib >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
# the build's flags (build/config.stamp): an up-to-date library logs no compile line
grep -q "KVQ_HAVE_CUDA" build/config.stamp 2>/dev/null || echo "hf_gpu.sh: libkvq was built WITHOUT CUDA (no nvcc?)"
echo "build done in $(( $(date +%s) - t0 )) s"
export KVQ_LIBRARY="$PWD/build/libkvq.so"
export PYTHONUNBUFFERED=1

t0=$(date +%s)
timeout 150 python3 -m pytest -q -rs -p no:cacheprovider python/tests/test_hf.py -k cuda \
  >"$OUT/pytest.log" 2>&1
echo "pytest -k cuda: rc $? in $(( $(date +%s) - t0 )) s: $(tail -1 "$OUT/pytest.log")"
grep -E "^(FAILED|ERROR|SKIPPED)|Error|assert" "$OUT/pytest.log" | head -20

# a hard stop at the deadline: the JSON lines written so far stay in $OUT
left=$(( ${HF_GPU_DEADLINE:-420} - ($(date +%s) - T_START) ))
[ "$left" -ge 90 ] || left=90
echo "benchmark: $left s left, --budget-s $((left - 60))"
rm -f "$OUT/hf_gpu.jsonl"
timeout "$left" python3 bench/hf_gpu.py --budget-s $((left - 60)) --json "$OUT/hf_gpu.jsonl" "$@" 2>&1 |
  grep --line-buffered -v "it/s\]" | tee "$OUT/hf_gpu.log"
