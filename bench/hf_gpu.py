"""hf_gpu.py - kvq.hf's KVQCache against transformers' DynamicCache in model.generate on
a GPU: prefill time, decode tokens/s, peak GPU memory and the bytes each cache holds, at
long contexts (8k, 16k, 32k tokens) and batch 1 and 16.

Models: SmolLM2-135M and Gemma-3-270M, loaded by transformers from the GGUF files under
models/ when they are there (gguf_file=), else the same architectures (their configs as
transformers reads them from those GGUFs, kept below) with random weights: speed and
memory do not depend on the weights, and the GGUFs are too large to travel to a GPU
machine. Prompts: random token ids of the context's length, one row per batch row;
every run generates --new tokens greedily (min_new_tokens = max_new_tokens, so EOS cannot
end it early). A logits processor stamps the time (after a device synchronize) at every
step: the first stamp ends the prefill, the rest time the decode steps. Peak memory is
torch.cuda.max_memory_allocated over the prefill and, separately, over the decode
steps (the weights included); "cache" is what the cache object holds at the end
(KVQCache.memory()["total"]; DynamicCache: its layers' tensors).

Caches: dynamic (DynamicCache), kvq strings. On CUDA a kvq layer runs on the GPU kernels
when they take its config (kvq.hf.cuda_refusal says why not): codes alone in a method
they have (mse:bits=4+mse:bits=4: 4-bit rotated Lloyd-Max keys and values), or the
presets (per-channel keys through kvq_cuda_chan, with their exact sink and newest
tokens; the prompt goes in with one kvq_cuda_chan_append_n call per layer, or per 32 MiB
piece of workspace; --per-token-append times the earlier path, one append call per
token and layer); Gemma's sliding layers stay exact windows there (exact_sliding=True).
A shape that does not fit, or would end past --budget-s, is skipped with the reason
printed. One JSON line per measurement, then a markdown table.

  python3 bench/hf_gpu.py --json out.jsonl                  # GPU, the full grid
  python3 bench/hf_gpu.py --device cpu --quick              # CPU check of the script
"""

import argparse
import inspect
import json
import os
import sys
import time
import traceback

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, LogitsProcessor, LogitsProcessorList

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import kvq  # noqa: E402
from kvq.hf import KVQCache, KVQLayer, cuda_refusal  # noqa: E402

# generate's keyword for the cache: cache= from transformers 5.24, past_key_values= before
KW = "cache" if "cache" in inspect.signature(transformers.LlamaModel.forward).parameters else "past_key_values"

# The two models' configs as transformers 5.25 reads them from the GGUF files (to_diff_dict);
# SmolLM2's max_position_embeddings raised from 8192 to cover 32k prompts (default RoPE
# does not read it).
ARCHS = {
    "smollm2-135m": {
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "config": {
            "model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
            "hidden_act": "silu", "max_position_embeddings": 65536, "rms_norm_eps": 1e-05,
            "tie_word_embeddings": True, "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
            "pad_token_id": 2, "bos_token_id": 1, "eos_token_id": 2,
        },
    },
    "gemma-3-270m": {
        "gguf": "gemma-3-270m-q4_k_m.gguf",
        "config": {
            "model_type": "gemma3_text", "vocab_size": 262144, "hidden_size": 640, "intermediate_size": 2048,
            "num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
            "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 32768, "rms_norm_eps": 1e-06,
            "tie_word_embeddings": True, "query_pre_attn_scalar": 256, "sliding_window": 512,
            "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
            "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
            "final_logit_softcapping": None, "attn_logit_softcapping": None,
            "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
        },
    },
}

MiB = 1 << 20


def load_model(name, models_dir, device, dtype, seed):
    """(model, source): the GGUF through transformers when present, else random weights."""
    arch = ARCHS[name]
    path = os.path.join(models_dir, arch["gguf"])
    if os.path.isfile(path):
        try:
            import gguf  # noqa: F401  (transformers' GGUF reader needs it)

            d, f = os.path.split(os.path.abspath(path))
            model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=dtype).to(device).eval()
            return model, "gguf " + f
        except ImportError:
            print("%s: the gguf package is missing; random weights instead" % name)
    cfg = dict(arch["config"])
    cfg = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).to(device).eval()
    return model, "random weights (%s config)" % arch["gguf"]


def cache_bytes(cache):
    """(bytes held, bytes of codes or None)."""
    if isinstance(cache, KVQCache):
        m = cache.memory()
        return m["total"], m.get("key_codes", 0) + m.get("value_codes", 0)
    total = 0
    for layer in cache.layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total, None


class StepClock(LogitsProcessor):
    """Stamps the time at every generation step, after the device has finished; at the
    first stamp (the prefill's end) reads the peak memory and starts a new peak."""

    def __init__(self, device):
        self.device = device
        self.stamps = []
        self.peak_prefill = 0

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, input_ids, scores):
        self.sync()
        self.stamps.append(time.perf_counter())
        if len(self.stamps) == 1 and self.device.type == "cuda":
            self.peak_prefill = torch.cuda.max_memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return scores


def make_cache(model, config, device, exact_sliding):
    if config == "dynamic":
        return DynamicCache(config=model.config)
    return KVQCache(model, config, exact_sliding=exact_sliding)


def refusal(model, config, device, exact_sliding):
    """Why a kvq config would not run on the GPU kernels here (None: it does, or CPU)."""
    if config == "dynamic" or device.type != "cuda":
        return None
    probe = KVQCache(model.config, config, exact_sliding=exact_sliding, n_threads=1)
    for layer in probe.layers:
        if isinstance(layer, KVQLayer):
            why = cuda_refusal(layer._config)
            if why is not None:
                return why
    return None


def per_token_append(on):
    """Make kvq.hf append a preset's prompt one token per call (the path before
    kvq_cuda_chan_append_n), or restore the multi-token call."""
    if on and not hasattr(per_token_append, "saved"):
        per_token_append.saved = kvq._native._cuda_chan_append_n
        kvq._native._cuda_chan_append_n = None
    elif not on and hasattr(per_token_append, "saved"):
        kvq._native._cuda_chan_append_n = per_token_append.saved
        del per_token_append.saved


def run_one(model, config, ids, new, device, exact_sliding):
    if config == "dynamic":
        model.set_attn_implementation("sdpa")
    cache = make_cache(model, config, device, exact_sliding)
    clock = StepClock(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    c0 = time.process_time()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, logits_processor=LogitsProcessorList([clock]),
                             pad_token_id=model.config.pad_token_id, **{KW: cache})
    clock.sync()
    t1 = time.perf_counter()
    cpu = time.process_time() - c0
    assert out.shape == (ids.shape[0], ids.shape[1] + new), out.shape
    s = clock.stamps
    steps = len(s) - 1
    decode_s = s[-1] - s[0]
    held, codes = cache_bytes(cache)
    r = {
        "prefill_s": s[0] - t0,
        "decode_steps": steps,
        "decode_s": decode_s,
        "decode_steps_per_s": steps / decode_s if decode_s > 0 else None,
        "decode_tokens_per_s": ids.shape[0] * steps / decode_s if decode_s > 0 else None,
        "total_s": t1 - t0,
        "cpu_s": cpu,
        "cache_bytes": held,
        "codes_bytes": codes,
    }
    if device.type == "cuda":
        r["peak_prefill_bytes"] = clock.peak_prefill
        r["peak_decode_bytes"] = torch.cuda.max_memory_allocated(device)
    if isinstance(cache, KVQCache):
        r["spec"] = cache.key_spec + " / " + cache.value_spec
        r["on_gpu_layers"] = sum(1 for L in cache.layers if isinstance(L, KVQLayer) and L._gpu is not None)
        r["kvq_layers"] = sum(1 for L in cache.layers if isinstance(L, KVQLayer))
    del cache, out
    return r


def fmt_mib(b):
    return "—" if b is None else "%.0f" % (b / MiB)


def table(rows):
    lines = ["| model | context | batch | cache | prefill s | decode tokens/s | vs dynamic | peak GPU MiB "
             "prefill / decode | cache MiB | vs dynamic |", "|---|---|---|---|---|---|---|---|---|---|"]
    base = {(r["model"], r["ctx"], r["batch"]): r for r in rows if r["config"] == "dynamic" and "skipped" not in r}
    for r in rows:
        label = r["config"] + (" (per-token append)" if r.get("append", "").startswith("per-token") else "")
        key = "%s | %d | %d | %s" % (r["model"], r["ctx"], r["batch"], label)
        if "skipped" in r:
            lines.append("| %s | skipped: %s |||||| " % (key, r["skipped"][:120]))
            continue
        b = base.get((r["model"], r["ctx"], r["batch"]))
        tps = r["decode_tokens_per_s"]
        speed = "%.2fx" % (tps / b["decode_tokens_per_s"]) if b and b is not r and tps and b["decode_tokens_per_s"] else ""
        size = "%.2fx" % (r["cache_bytes"] / b["cache_bytes"]) if b and b is not r and b["cache_bytes"] else ""
        lines.append("| %s | %.2f | %.1f | %s | %s / %s | %s | %s |" % (
            key, r["prefill_s"], tps or 0.0, speed, fmt_mib(r.get("peak_prefill_bytes")),
            fmt_mib(r.get("peak_decode_bytes")), fmt_mib(r["cache_bytes"]), size))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", default="smollm2-135m,gemma-3-270m")
    ap.add_argument("--models-dir", default="models")
    ap.add_argument("--ctx", default="8192,16384,32768", help="prompt lengths")
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--configs", default="dynamic,mse:bits=4+mse:bits=4,q4",
                    help="dynamic and kvq cache strings, comma-separated (a string's own options after "
                         "@ stay with it)")
    ap.add_argument("--new", type=int, default=64, help="tokens generated per run")
    ap.add_argument("--dtype", default=None, help="bfloat16 (CUDA default) or float32 (CPU default)")
    ap.add_argument("--exact-sliding", default="auto", choices=["auto", "0", "1"],
                    help="keep sliding-window layers exact (auto: on CUDA, where kvq's sliding layers "
                         "would take the CPU path)")
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="skip a run that would end past this many seconds from the start")
    ap.add_argument("--quick", action="store_true", help="small contexts and batches, few tokens (CPU check)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also append the JSON lines to this file")
    ap.add_argument("--per-token-append", action="store_true",
                    help="append the presets' prompts one token per call (the earlier path; its rows say "
                         "append: per-token)")
    a = ap.parse_args()
    if a.quick:
        a.ctx, a.batch, a.new = "64,160", "1,2", 4
    start = time.perf_counter()
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("hf_gpu: torch sees no CUDA device")
    dtype = getattr(torch, a.dtype) if a.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    exact_sliding = device.type == "cuda" if a.exact_sliding == "auto" else a.exact_sliding == "1"
    # "mse:bits=4@window=0,sink=0": commas inside an @ option list belong to that config
    configs = []
    for part in a.configs.split(","):
        if configs and "@" in configs[-1] and "=" in part and "@" not in part:
            configs[-1] += "," + part
        elif part:
            configs.append(part)
    ctxs = [int(x) for x in a.ctx.split(",") if x]
    batches = [int(x) for x in a.batch.split(",") if x]
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "transformers": transformers.__version__, "kvq": kvq.version(),
           "kvq_cuda_devices": kvq.cuda_devices(), "dtype": str(dtype).replace("torch.", ""),
           "new_tokens": a.new, "exact_sliding": exact_sliding}
    env["append"] = "per-token" if a.per_token_append else "multi-token"
    if a.per_token_append:
        per_token_append(True)
    elif kvq._native._cuda_chan_append_n is None:
        env["append"] = "per-token (libkvq has no kvq_cuda_chan_append_n)"
    print("hf_gpu: " + json.dumps(env), flush=True)
    out = open(a.json, "a") if a.json else None

    def emit(r):
        line = json.dumps(r)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    models = {}
    broken = {}  # (model, config): why its warm-up showed it cannot be measured here
    for name in [m for m in a.models.split(",") if m]:
        t = time.perf_counter()
        model, source = load_model(name, a.models_dir, device, dtype, a.seed)
        text = model.config.get_text_config(decoder=True)
        models[name] = (model, source, text.vocab_size)
        print("%s: %s, %d layers, %s; loaded in %.1f s" % (
            name, source, text.num_hidden_layers, type(model).__name__, time.perf_counter() - t), flush=True)
        # warm-up: kernels loaded, cuBLAS and kvq's GPU state set up before anything is timed
        warm = torch.randint(3, text.vocab_size, (1, 64), generator=torch.Generator().manual_seed(a.seed)).to(device)
        for config in configs:
            if refusal(model, config, device, exact_sliding) is None:
                try:
                    w = run_one(model, config, warm, 2, device, exact_sliding)
                    if device.type == "cuda" and w.get("on_gpu_layers", 0) < w.get("kvq_layers", 0):
                        broken[(name, config)] = ("only %d of %d kvq layers took the GPU kernels in the warm-up "
                                                  "(the rest would run on the CPU)" % (w["on_gpu_layers"], w["kvq_layers"]))
                except Exception as e:
                    print("%s %s: the warm-up failed:" % (name, config), flush=True)
                    traceback.print_exc()
                    broken[(name, config)] = "the warm-up failed: %s: %s" % (
                        type(e).__name__, (str(e).splitlines() or [""])[0][:200])

    rows = []
    # the last run per (model, config): (seconds, context, batch), for the next shape's estimate,
    # scaled by batch and by context to the power 1.5 (prefill attention grows as its square)
    last = {}
    # smallest shapes first, every model at a shape before the next: the budget cuts the largest
    for ctx in ctxs:
        for batch in batches:
            for name, (model, source, vocab) in models.items():
                gen = torch.Generator().manual_seed(a.seed + ctx + batch)
                ids = torch.randint(3, vocab, (batch, ctx), generator=gen).to(device)
                for config in configs:
                    r = {"model": name, "source": source, "ctx": ctx, "batch": batch, "config": config,
                         "dtype": env["dtype"], "new_tokens": a.new}
                    if config != "dynamic":
                        r["append"] = env["append"]
                    why = broken.get((name, config)) or refusal(model, config, device, exact_sliding)
                    if why is None:
                        t0, c0, b0 = last.get((name, config), (0.0, 1, 1))
                        guess = t0 * (batch / b0) * (ctx / c0) ** 1.5
                        left = a.budget_s - (time.perf_counter() - start)
                        if left <= 0:
                            why = "the time budget (--budget-s %.0f) is spent" % a.budget_s
                        elif guess > left:
                            why = "would take about %.0f s, %.0f s of the budget left" % (guess, left)
                    if why is not None:
                        r["skipped"] = why
                        emit(r)
                        rows.append(r)
                        continue
                    try:
                        t = time.perf_counter()
                        r.update(run_one(model, config, ids, a.new, device, exact_sliding))
                        last[(name, config)] = (time.perf_counter() - t, ctx, batch)
                    except torch.cuda.OutOfMemoryError as e:
                        r["skipped"] = "out of GPU memory: " + str(e).splitlines()[0][:160]
                    except Exception as e:  # one shape's failure must not cost the others
                        traceback.print_exc()
                        r["skipped"] = "%s: %s" % (type(e).__name__, (str(e).splitlines() or [""])[0][:200])
                    if "skipped" in r and device.type == "cuda":
                        torch.cuda.empty_cache()
                    emit(r)
                    rows.append(r)
                del ids
    print()
    print(table(rows))
    print("\nhf_gpu: %.0f s in all" % (time.perf_counter() - start))
    if out:
        out.close()


if __name__ == "__main__":
    main()
