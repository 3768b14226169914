"""hf_cache.py - kvq.hf's KVQCache against transformers' own caches on a real model
loaded by transformers from a GGUF file: perplexity on a text when every token after
the first is decoded one step at a time through the cache (so each cache's compressed
past is what attention reads), bytes held by the cache at the end, and decode speed.

Peers, same run: DynamicCache (exact), QuantizedCache with the quanto backend (int4,
int2; PyPI optimum-quanto) and hqq (PyPI hqq) when importable, fp8 where the torch
build has it. Needs torch, transformers >= 5, gguf. --kl adds KL from DynamicCache and
top-1 agreement; a kvq config ending in /blind ("q2/blind") hides the queries from its
channel keys (bits from the keys' ranges alone, as the GPU path codes them).

  python3 bench/hf_cache.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
      --text data/fortunes-science.txt --ctx 512 --rows 4 --json out.json
"""

import argparse
import inspect
import json
import math
import os
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, QuantizedCache

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import kvq  # noqa: E402
from kvq.hf import KVQCache, KVQLayer  # noqa: E402

KW = "cache" if "cache" in inspect.signature(transformers.LlamaModel.forward).parameters else "past_key_values"


def tensor_bytes(t):
    """Bytes of a tensor, quantized tensor subclasses (quanto) included."""
    if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor:
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def held_bytes(cache):
    """What a cache holds at the end: kvq's own accounting, or every tensor in its layers."""
    if isinstance(cache, KVQCache):
        return cache.memory()["total"]
    total = 0
    for layer in cache.layers:
        for v in vars(layer).values():
            if isinstance(v, torch.Tensor):
                total += tensor_bytes(v)
            elif isinstance(v, dict):  # hqq keeps (tensor, meta) pairs
                total += sum(tensor_bytes(x) for x in v.values() if isinstance(x, torch.Tensor))
            elif isinstance(v, (tuple, list)):
                for x in v:
                    if isinstance(x, torch.Tensor):
                        total += tensor_bytes(x)
                    elif isinstance(x, dict):
                        total += sum(tensor_bytes(y) for y in x.values() if isinstance(y, torch.Tensor))
    return total


def make_caches(model, names, threads=0):
    cfg = model.config
    out = {}
    for name in names:
        if name == "dynamic":
            out[name] = lambda: DynamicCache(config=cfg)
        elif name.startswith("quanto-int") or name.startswith("hqq-int"):
            # BACKEND-intN[-axisA][-resR]: transformers' defaults are axis 0 and a residual of
            # 128 exact tokens; 1 here keeps (almost) every token quantized, as kvq's caches do
            backend, rest = name.split("-int")
            parts = rest.split("-")
            opts = {"nbits": int(parts[0]), "residual_length": 1}
            for p in parts[1:]:
                if p.startswith("axis"):
                    opts["axis_key"] = opts["axis_value"] = int(p[4:])
                elif p.startswith("res"):
                    opts["residual_length"] = int(p[3:])
            out[name] = lambda b=backend, o=opts: QuantizedCache(backend=b, config=cfg, **o)
        elif name == "fp8":
            out[name] = lambda: QuantizedCache(backend="fp8", config=cfg)
        elif name.endswith("/blind"):  # kvq with its queries hidden from the channel keys
            out[name] = lambda s=name[: -len("/blind")]: KVQCache(model, s, n_threads=threads, observe_queries=False)
        else:  # a kvq cache string: preset or KSPEC[+VSPEC][@options]
            out[name] = lambda s=name: KVQCache(model, s, n_threads=threads)
    return out


def decode_nll(model, rows, cache, ref=None, keep=False):
    """Mean negative log-likelihood of tokens 1.. of each row, the first token as the
    prompt and every later one fed alone through the cache. With ref (the exact cache's
    log-probabilities, kept as float16 [steps][rows][vocab] when keep is set): also the
    mean KL(ref || this) and how often both put the same token first."""
    nll, n, kl, same = 0.0, 0, 0.0, 0
    kept = []
    with torch.no_grad():
        logits = model(rows[:, :1], use_cache=True, **{KW: cache}).logits[:, -1]
        for t in range(1, rows.shape[1]):
            lp = torch.log_softmax(logits.float(), dim=-1)
            nll -= lp.gather(1, rows[:, t : t + 1]).sum().item()
            n += rows.shape[0]
            if keep:
                kept.append(lp.half())
            if ref is not None:
                r = ref[t - 1].float()
                kl += (r.exp() * (r - lp)).sum().item()
                same += (r.argmax(-1) == lp.argmax(-1)).sum().item()
            if t + 1 < rows.shape[1]:
                logits = model(rows[:, t : t + 1], use_cache=True, **{KW: cache}).logits[:, -1]
    return nll / n, (kl / n, 100.0 * same / n) if ref is not None else None, kept


def decode_speed(model, make, prompt_len, new, ids):
    cache = make()
    with torch.no_grad():
        model(ids[:, :prompt_len], use_cache=True, **{KW: cache})
        tok = ids[:, prompt_len : prompt_len + 1]
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(new):
            logits = model(tok, use_cache=True, **{KW: cache}).logits[:, -1]
            tok = logits.argmax(-1, keepdim=True)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return new / wall, new / cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--text", default="data/fortunes-science.txt")
    ap.add_argument("--ctx", type=int, default=512, help="tokens per row")
    ap.add_argument("--rows", type=int, default=4, help="rows (batch), consecutive chunks of the text")
    ap.add_argument("--configs", default="dynamic,fp16,q4,q3,q2,quanto-int4,quanto-int2,hqq-int4,hqq-int2")
    ap.add_argument("--speed", default="dynamic,q4", help="configs timed at batch 1 ('' for none)")
    ap.add_argument("--speed-prompt", type=int, default=512)
    ap.add_argument("--speed-new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads and kvq's attention pool (0: their defaults, one per CPU)")
    ap.add_argument("--kl", action="store_true",
                    help="also KL from DynamicCache and top-1 agreement (run 'dynamic' first; "
                    "keeps its log-probabilities, rows x ctx x vocab float16)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    d, f = os.path.split(os.path.abspath(a.model))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    ids = tok(open(a.text, encoding="utf-8").read(), return_tensors="pt").input_ids[0]
    need = a.ctx * a.rows
    if ids.numel() < need:
        sys.exit("hf_cache: the text has %d tokens, %d needed" % (ids.numel(), need))
    rows = ids[:need].view(a.rows, a.ctx)
    text_cfg = model.config.get_text_config(decoder=True)
    n_kv = text_cfg.num_key_value_heads
    head_dim = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // text_cfg.num_attention_heads
    fp16_bytes = 2 * 2 * text_cfg.num_hidden_layers * n_kv * head_dim * need
    print("model %s: %d layers, %d KV heads of %d; %d rows x %d tokens; torch %s, transformers %s, "
          "kvq %s (%s), %d threads"
          % (f, text_cfg.num_hidden_layers, n_kv, head_dim, a.rows, a.ctx, torch.__version__,
             transformers.__version__, kvq.version(), kvq.cpu_isa(), torch.get_num_threads()))

    makers = make_caches(model, [c for c in a.configs.split(",") if c], a.threads)
    results = []
    base = None
    ref = None  # the exact cache's log-probabilities, with --kl
    for name, make in makers.items():
        try:
            cache = make()
        except Exception as e:  # a backend not installed
            print("%-16s skipped: %s" % (name, str(e).splitlines()[0][:100]))
            continue
        c0 = time.process_time()
        try:
            nll, agree, kept = decode_nll(model, rows, cache, ref=ref, keep=a.kl and name == "dynamic")
            if kept:
                ref = kept
        except Exception as e:
            print("%-16s failed: %s" % (name, str(e).splitlines()[0][:100]))
            continue
        cpu = time.process_time() - c0
        held = held_bytes(cache)
        ppl = math.exp(nll)
        if name == "dynamic":
            base = ppl
        r = {"config": name, "ppl": ppl, "held_bytes": held, "fp16_bytes": fp16_bytes,
             "bits_per_number": 16.0 * held / fp16_bytes, "cpu_s": cpu}
        if isinstance(cache, KVQCache):
            r["spec"] = cache.key_spec + " / " + cache.value_spec
        if agree is not None:
            r["kl"], r["top1_pct"] = agree
        results.append(r)
        print("%-16s ppl %8.3f  %s  held %9d B = %5.2f bits/number%s  (cpu %.0f s)"
              % (name, ppl, "(+%5.2f %%)" % (100 * (ppl / base - 1)) if base else "           ",
                 held, r["bits_per_number"],
                 "  KL %.5f top-1 %.2f %%" % agree if agree is not None else "", cpu))

    speed = []
    for name in [c for c in a.speed.split(",") if c]:
        if name not in makers:
            makers.update(make_caches(model, [name], a.threads))
        one = ids[: a.speed_prompt + 1].view(1, -1)
        tps_wall, tps_cpu = decode_speed(model, makers[name], a.speed_prompt, a.speed_new, one)
        speed.append({"config": name, "tokens_per_s": tps_wall, "tokens_per_cpu_s": tps_cpu})
        print("%-16s decode after %d tokens, batch 1: %.1f tokens/s (%.1f per CPU second)"
              % (name, a.speed_prompt, tps_wall, tps_cpu))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"model": f, "ctx": a.ctx, "rows": a.rows, "results": results, "speed": speed}, fh, indent=1)


if __name__ == "__main__":
    main()
