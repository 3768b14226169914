#!/usr/bin/env python3
"""The engine's prompt (pp) and generation (tg) speed against llama.cpp's llama-bench in
the same run: for each model and KV cache, llama-bench then build/bench/bench_engine with
the same token counts, depth and threads, medians of --repeats runs each, and the ratio
kvq / llama.cpp. Prints a Markdown table and, with --json, one JSON object per row.

    python3 bench/engine_peers.py --llama-bench PATH/llama-bench \
        --models models/SmolLM2-135M-Instruct.Q4_1.gguf,models/gemma-3-270m-q4_k_m.gguf
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

# (label, llama.cpp cache type, kvq cache spec, n_prompt, n_gen, depth)
CASES = [
    ("fp16 KV", "f16", "fp16", 512, 128, 0),
    ("q4_0 KV", "q4_0", "q4_0", 512, 128, 0),
    ("q4 preset vs q4_0, depth 4000", "q4_0", "q4", 0, 128, 4000),
]


def llama_once(bench, model, ctype, p, n, d, threads, repeats):
    """median tok/s of one test (pp when n == 0, else tg) and the CPU seconds it took"""
    cmd = [bench, "-m", model, "-t", str(threads), "-p", str(p), "-n", str(n), "-fa", "1",
           "-ctk", ctype, "-ctv", ctype, "-r", str(repeats), "-o", "json"]
    if d:
        cmd += ["-d", str(d)]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    rows = json.loads(out)
    return statistics.median(rows[0]["samples_ts"]), cpu


def llama(bench, model, ctype, p, n, d, threads, repeats):
    """wall tok/s (median) and CPU tok/s of pp and tg. llama-bench reports no CPU time, so
    the CPU figure is a difference of two runs that cancels loading, warm-up and depth
    filling: pp, 1 + repeats runs less 1 run (at depth 0); tg, n less n / 4 tokens"""
    res = [0.0, 0.0, 0.0, 0.0]
    if p:
        ts, cpu_many = llama_once(bench, model, ctype, p, 0, d, threads, 1 + repeats)
        _, cpu_one = llama_once(bench, model, ctype, p, 0, d, threads, 1)
        res[0:2] = [ts, p * repeats / (cpu_many - cpu_one) if cpu_many > cpu_one and not d else 0.0]
    if n:
        ts, cpu_n = llama_once(bench, model, ctype, 0, n, d, threads, repeats)
        _, cpu_q = llama_once(bench, model, ctype, 0, n // 4, d, threads, repeats)
        # llama-bench's warm-up run generates one token, the same in both
        res[2:4] = [ts, (n - n // 4) * repeats / (cpu_n - cpu_q) if cpu_n > cpu_q else 0.0]
    return res


def kvq(bench, model, spec, p, n, d, threads, repeats):
    cmd = [bench, model, "-t", str(threads), "-p", str(p), "-n", str(n), "-d", str(d),
           "-r", str(repeats), "--cache", spec, "--json"]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--kvq-bench", default="build/bench/bench_engine")
    ap.add_argument("--models", required=True, help="comma-separated GGUF paths")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", default="0,1,2", help="indices into the case list")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    print("| model | cache | test | llama.cpp tok/s | kvq tok/s | ratio | llama.cpp CPU tok/s | kvq CPU tok/s | CPU ratio | load |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for model in a.models.split(","):
        for ci in (int(c) for c in a.cases.split(",")):
            label, ctype, spec, p, n, d = CASES[ci]
            lpp, lppc, ltg, ltgc = llama(a.llama_bench, model, ctype, p, n, d, a.threads, a.repeats)
            k = kvq(a.kvq_bench, model, spec, p, n, d, a.threads, a.repeats)
            load = os.getloadavg()[0]
            for test, lv, lc, kv, kc in (("pp%d" % p, lpp, lppc, k["pp_tok_s"], k["pp_cpu_tok_s"]),
                                         ("tg%d" % n + (" @ d%d" % d if d else ""), ltg, ltgc, k["tg_tok_s"],
                                          k["tg_cpu_tok_s"])):
                if not lv or not kv:
                    continue
                print("| %s | %s | %s | %.1f | %.1f | %.2fx | %.1f | %.1f | %.2fx | %.1f |" % (
                    os.path.basename(model), label, test, lv, kv, kv / lv, lc, kc, kc / lc if lc else 0, load))
                if a.json:
                    print(json.dumps({"model": model, "cache": label, "test": test, "llama_tok_s": lv,
                                      "llama_cpu_tok_s": lc, "kvq_tok_s": kv, "kvq_cpu_tok_s": kc,
                                      "ratio": kv / lv, "cpu_ratio": kc / lc if lc else None,
                                      "threads": a.threads, "repeats": a.repeats, "load1": load}),
                          file=sys.stderr)
            sys.stdout.flush()


if __name__ == "__main__":
    main()
