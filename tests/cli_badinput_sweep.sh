#!/bin/sh
# cli_badinput_sweep.sh - every hostile CLI input found so far, run against a kvq binary:
# each must exit 1 (never 0, never a signal or a sanitizer abort) with exactly one
# non-empty line on stderr. Run from the repository root:
#   tests/cli_badinput_sweep.sh [KVQ] [SCRATCH_DIR]
# (make test runs it through the badinput2_cli_sweep test.)
KVQ=${1:-build/kvq}
TMP=${2:-$(mktemp -d)}
TINY=tests/data/tiny-llama.gguf
VEC=tests/data/index-v1.fvecs
mkdir -p "$TMP/dir" || exit 2
T="$TMP/text.txt"
i=0
while [ $i -lt 40 ]; do printf 'The quick brown fox jumps over the lazy dog %d times. ' $i; i=$((i + 1)); done > "$T"
head -c 1000 "$TINY" > "$TMP/truncated.gguf"
printf 'not a gguf at all' > "$TMP/foreign.gguf"
$KVQ index build -i "$VEC" -o "$TMP/ix.kvqi" --nlist 4 > /dev/null 2>&1 || { echo "sweep: cannot build the test index" >&2; exit 2; }
head -c 1640 "$VEC" > "$TMP/few.fvecs"  # 10 rows of dim 40

fails=0
n=0
# case: shell words after "kvq" (eval'd, so quote as in a shell)
bad() {
    n=$((n + 1))
    eval "$KVQ $1" > "$TMP/out.txt" 2> "$TMP/err.txt" < /dev/null
    rc=$?
    lines=$(wc -l < "$TMP/err.txt")
    first=$(head -n 1 "$TMP/err.txt")
    if [ $rc -ne 1 ] || [ "$lines" -ne 1 ] || [ -z "$first" ]; then
        echo "sweep FAIL: kvq $1 -> exit $rc, $lines stderr lines:" >&2
        head -n 5 "$TMP/err.txt" | sed 's/^/    /' >&2
        fails=$((fails + 1))
    fi
}

# 1. absurd --window values
bad "perplexity -m $TINY -f $T --ctx 64 --window 100000000"
bad "generate -m $TINY -p hi -n 2 --window 100000000"
# 3. number options: no silent defaults, no partial numbers, no wrap, no NaN
bad "generate -m $TINY -p hi -n abc"
bad "generate -m $TINY -p hi -n 2abc"
bad "generate -m $TINY -p hi --ctx abc"
bad "generate -m $TINY -p hi --threads abc"
bad "generate -m $TINY -p hi --temp abc"
bad "generate -m $TINY -p hi --temp nan"
bad "generate -m $TINY -p hi --window abc"
bad "generate -m $TINY -p hi --seed -1"
bad "perplexity -m $TINY -f $T --chunks abc"
bad "perplexity -m $TINY -f $T --ctx abc"
bad "calibrate --method vecinfer -o $TMP/c.safetensors -m $TINY -f $T --tokens abc"
# 4. config values: decimal only
bad "generate -m $TINY -p hi --cache-k mse:bits=010"
bad "generate -m $TINY -p hi --cache-k mse:bits=0x2"
bad "generate -m $TINY -p hi --cache-k 'mse:bits= 2'"
bad "generate -m $TINY -p hi --cache-k mse:bits=08"
# 5. a directory where a file belongs
bad "index search -x $TMP/dir -q $VEC"
bad "perplexity -m $TINY -f $TMP/dir"
bad "generate -m $TINY -f $TMP/dir"
bad "generate -m $TMP/dir -p hi"
# 7. an artifact with no values' spec; k-means rounds past the cap
bad "perplexity -m $TINY -f $T --ctx 64 --chunks 1 --configs 'vecinfer:artifact=$TMP/k.safetensors'"
bad "generate -m $TINY -p hi --cache 'vecinfer:artifact=$TMP/k.safetensors@sink=1'"
bad "index build -i $VEC -o $TMP/ix2.kvqi --train-iters 4000000000"
# 8. messages that say what is wrong
bad "generate -m $TINY -p hi -n 1 --outliers 64"
bad "index build -i $TMP/few.fvecs -o $TMP/ix3.kvqi --nlist 1000"
bad "index build -i $VEC -o $TMP/ix4.kvqi --split --bits 1"
bad "generate -m $TINY -p hi --cache-k vecinfer"
bad "generate -m no-such-model.gguf -p hi"
bad "calibrate --method vecinfer -o $TMP/no/such/dir/c.safetensors -m $TINY -f $T"
bad "index build -i $VEC -o $TMP/no/such/dir/ix.kvqi"
# 9. GGUF that is cut short or foreign
bad "generate -m $TMP/truncated.gguf -p hi"
bad "generate -m $TMP/foreign.gguf -p hi"
# 10. --dump-kv into a directory that cannot be made
bad "generate -m $TINY -p hi -n 2 --dump-kv $TMP/no/such/dir"

echo "sweep: $n hostile inputs, $fails failed"
[ $fails -eq 0 ]
