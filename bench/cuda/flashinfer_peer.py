"""flashinfer_peer.py - FlashInfer's batch decode as a peer of kvq's fused decode attention,
at the shapes bench_attn and sdpa.py use: Llama-3.1-8B decode (32 query heads, 8 KV heads,
head_dim 128), batch 1/8/32, context 4k/32k/128k, every sequence at full length.

FlashInfer: BatchDecodeWithPagedKVCacheWrapper over 16-token pages (a shuffled page pool,
as bench_attn --paged does), fp16 query and output, fp16 and float8_e4m3fn KV (scales 1),
tensor cores on (the fa2 prefill kernels, FlashInfer's pick for GQA groups of 4), HND and
NHD page layouts; --cuda-cores adds the CUDA-core decode kernel (use_tensor_cores=False).
Plan outside the timing, run() in a CUDA graph built with the wrapper's graph buffers.
In the same process: the device-to-device copy ceiling (2 GiB, bytes read + written, plain
stream copies, as bench_attn measures it) and SDPA with the FlashAttention backend forced
on fp16 K/V [B, 8, L, 128] (sdpa.py's layout and timing).
Each sample replays a CUDA graph of REPS calls timed with CUDA events; medians of SAMPLES
(sdpa.py's time_graph; plain events if the capture fails).
Bytes = K + V read + query + output (fp16 KV 512 B per token and KV head, fp8 256 B).
Accuracy: relative error against a float32 reference over the same (dequantized) K/V for
batch <= 8 and context <= 32k (nan elsewhere).
Without FlashInfer (or without a GPU) it says so and exits 0.
Usage: python3 bench/cuda/flashinfer_peer.py [--quick] [--cuda-cores] [--nhd-only|--hnd-only]"""
import os
import sys
import time

try:
    import torch
except ImportError as e:
    print(f"FLASHINFER skipped: torch missing ({e})")
    sys.exit(0)

if not torch.cuda.is_available():
    print("FLASHINFER skipped: no CUDA device")
    sys.exit(0)

try:
    import flashinfer.decode as fi_decode
    from flashinfer.version import __version__ as FI_VERSION
except Exception as e:  # noqa: BLE001 - any import failure means no peer here
    print(f"FLASHINFER missing: {type(e).__name__}: {str(e)[:200]}")
    sys.exit(0)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sdpa import REPS, SAMPLES, time_graph  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

N_Q, N_KV, D, PAGE = 32, 8, 128, 16
GROUP = N_Q // N_KV
WORKSPACE = 256 << 20


def time_plain(fn):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(SAMPLES):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(REPS):
            fn()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) / REPS)
    times.sort()
    return times[len(times) // 2]


def prebuild(cuda_cores):
    """Compile the JIT modules the timing uses in one parallel ninja run (MAX_JOBS); without
    it FlashInfer builds each on first use, one after another. Best effort: these are
    internal names of FlashInfer 0.7; if they move, plan() compiles as usual."""
    try:
        from flashinfer.jit.attention.modules import gen_batch_decode_module
        from flashinfer.jit.core import build_jit_specs
        from flashinfer.prefill import _gen_batch_prefill_primary_module
        specs = []
        for kv in (torch.float16, torch.float8_e4m3fn):
            args = (torch.float16, kv, torch.float16, torch.int32, D, D, 0, False, False)
            specs.append(_gen_batch_prefill_primary_module("fa2", *args, False))
            if cuda_cores:
                specs.append(gen_batch_decode_module(*args))
        ready = sum(1 for sp in specs if sp.aot_path.exists())  # shipped prebuilt: not rebuilt
        t0 = time.time()
        build_jit_specs(specs)
        print(f"FI_PREBUILD modules={len(specs)} prebuilt={ready} s={time.time() - t0:.1f}", flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"FI_PREBUILD skipped: {type(e).__name__}: {str(e)[-300:]}", flush=True)


def copy_ceiling():
    n = 2 << 30
    src = torch.full((n,), 1, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = time_plain(lambda: dst.copy_(src))
    gbs = 2.0 * n / (ms * 1e-3) / 1e9
    print(f"COPY bytes={n} ms={ms:.4f} GBps={gbs:.1f}", flush=True)
    del src, dst
    torch.cuda.empty_cache()
    return gbs


def reference(q, kv, idx, pps, layout, b_count):
    """float32 attention of the first b_count sequences over the pages they own."""
    outs = []
    for b in range(b_count):
        sel = idx[b * pps:(b + 1) * pps].long()
        if kv.element_size() == 1:  # gather fp8 pages as bytes (no fp8 indexing kernels)
            pages = kv.view(torch.uint8)[sel].view(kv.dtype).float()
        else:
            pages = kv[sel].float()
        if layout == "HND":  # [pps, 2, H, P, D]
            k = pages[:, 0].permute(1, 0, 2, 3).reshape(N_KV, pps * PAGE, D)
            v = pages[:, 1].permute(1, 0, 2, 3).reshape(N_KV, pps * PAGE, D)
        else:  # [pps, 2, P, H, D]
            k = pages[:, 0].permute(2, 0, 1, 3).reshape(N_KV, pps * PAGE, D)
            v = pages[:, 1].permute(2, 0, 1, 3).reshape(N_KV, pps * PAGE, D)
        qb = q[b].float().view(N_KV, GROUP, D)
        s = torch.einsum("hgd,hld->hgl", qb, k) * D ** -0.5
        o = torch.einsum("hgl,hld->hgd", torch.softmax(s, dim=-1), v)
        outs.append(o.reshape(N_Q, D))
        del pages, k, v, s
    return torch.stack(outs)


def bench_fi(b, L, kv, dtype_name, layout, tensor_cores, copy_gbs, check):
    pps = L // PAGE
    total = b * pps
    view = kv.view(total, 2, N_KV, PAGE, D) if layout == "HND" else kv.view(total, 2, PAGE, N_KV, D)
    gen = torch.Generator(device="cpu").manual_seed(1)
    indices = torch.randperm(total, generator=gen).to(torch.int32).cuda()
    indptr = (torch.arange(b + 1, dtype=torch.int32) * pps).cuda()
    last = torch.full((b,), PAGE, dtype=torch.int32, device="cuda")
    torch.manual_seed(2)
    q = torch.randn(b, N_Q, D, device="cuda", dtype=torch.float16)
    out = torch.empty_like(q)
    ws = torch.zeros(WORKSPACE, dtype=torch.uint8, device="cuda")
    w = fi_decode.BatchDecodeWithPagedKVCacheWrapper(
        ws, layout, use_cuda_graph=True, use_tensor_cores=tensor_cores,
        paged_kv_indptr_buffer=indptr, paged_kv_indices_buffer=indices,
        paged_kv_last_page_len_buffer=last, backend="fa2")
    w.plan(indptr, indices, last, N_Q, N_KV, D, PAGE, pos_encoding_mode="NONE",
           q_data_type=torch.float16, kv_data_type=kv.dtype)

    def run():
        w.run(q, view, out=out)

    run()
    torch.cuda.synchronize()
    err = float("nan")
    if check:
        ref = reference(q, view, indices, pps, layout, b)
        err = ((out.float() - ref).norm() / ref.norm()).item()
        del ref
    how = "graph"
    try:
        ms = time_graph(run)
    except RuntimeError as e:
        how = f"events({str(e)[:40]!r})"
        ms = time_plain(run)
    bytes_ = 2 * b * N_KV * L * D * kv.element_size() + 2 * b * N_Q * D * 2
    gbs = bytes_ / (ms * 1e-3) / 1e9
    print(f"FI batch={b} ctx={L} kv={dtype_name} layout={layout} tc={int(tensor_cores)} "
          f"us={ms * 1e3:.2f} GBps={gbs:.1f} pct_copy={100 * gbs / copy_gbs:.1f} "
          f"rel_err={err:.2e} timing={how}", flush=True)
    del w, ws, q, out, indices, indptr, last
    return ms * 1e3


def try_fi(b, L, kv, dtype_name, layout, tensor_cores, copy_gbs, check):
    try:
        return bench_fi(b, L, kv, dtype_name, layout, tensor_cores, copy_gbs, check)
    except Exception as e:  # noqa: BLE001 - report and go on with the other variants
        print(f"FI batch={b} ctx={L} kv={dtype_name} layout={layout} tc={int(tensor_cores)} "
              f"failed={type(e).__name__}: {str(e)[-400:]!r}", flush=True)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        return None


def bench_sdpa(b, L, copy_gbs):
    torch.manual_seed(0)
    k = torch.randn(b, N_KV, L, D, device="cuda", dtype=torch.float16)
    v = torch.randn(b, N_KV, L, D, device="cuda", dtype=torch.float16)
    q = torch.randn(b, N_KV, GROUP, D, device="cuda", dtype=torch.float16)
    out = torch.empty_like(q)

    def run():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out.copy_(torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=D ** -0.5))

    ms = time_graph(run)
    bytes_ = 2 * b * N_KV * L * D * 2 + 2 * b * N_Q * D * 2
    gbs = bytes_ / (ms * 1e-3) / 1e9
    print(f"SDPA batch={b} ctx={L} backend=flash us={ms * 1e3:.2f} GBps={gbs:.1f} "
          f"pct_copy={100 * gbs / copy_gbs:.1f}", flush=True)
    del k, v, q, out
    torch.cuda.empty_cache()
    return ms * 1e3


def main():
    quick = "--quick" in sys.argv
    layouts = ["HND", "NHD"]
    if "--nhd-only" in sys.argv:
        layouts = ["NHD"]
    if "--hnd-only" in sys.argv:
        layouts = ["HND"]
    variants = [(lay, True) for lay in layouts]
    if "--cuda-cores" in sys.argv:
        variants.append((layouts[0], False))
    props = torch.cuda.get_device_properties(0)
    print(f"FI_DEVICE {props.name} sms={props.multi_processor_count} torch={torch.__version__} "
          f"cuda={torch.version.cuda} flashinfer={FI_VERSION} page={PAGE} reps={REPS} samples={SAMPLES}",
          flush=True)
    prebuild("--cuda-cores" in sys.argv)
    copy_gbs = copy_ceiling()
    rows = []
    batches = (1, 8) if quick else (1, 8, 32)
    ctxs = (4096, 32768) if quick else (4096, 32768, 131072)
    for b in batches:
        for L in ctxs:
            need = 3 * b * N_KV * L * D * 2 * 2 + (2 << 30)
            free, _ = torch.cuda.mem_get_info()
            if need > free:
                print(f"FI batch={b} ctx={L} skipped=memory", flush=True)
                continue
            check = b <= 8 and L <= 32768
            torch.manual_seed(3)
            kv16 = torch.randn(b * (L // PAGE) * 2 * N_KV * PAGE * D, device="cuda", dtype=torch.float16)
            row = {"b": b, "L": L}
            for lay, tc in variants:
                row[("fp16", lay, tc)] = try_fi(b, L, kv16, "fp16", lay, tc, copy_gbs, check)
            kv8 = kv16.to(torch.float8_e4m3fn)
            del kv16
            torch.cuda.empty_cache()
            for lay, tc in variants:
                row[("fp8", lay, tc)] = try_fi(b, L, kv8, "fp8_e4m3", lay, tc, copy_gbs, check)
            del kv8
            torch.cuda.empty_cache()
            try:
                row["sdpa"] = bench_sdpa(b, L, copy_gbs)
            except RuntimeError as e:
                print(f"SDPA batch={b} ctx={L} failed={str(e)[:120]!r}", flush=True)
                row["sdpa"] = float("nan")
            rows.append(row)

    # summary: the faster page layout of the tensor-core kernel per shape and KV type
    print("\n| batch | context | FI fp16 µs | GB/s | % of copy | FI fp8 µs | GB/s | % of copy "
          "| SDPA-flash µs | fp16 vs SDPA | fp8 vs SDPA | fp8 vs fp16 |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        b, L = r["b"], r["L"]
        cells = []
        best = {}
        for dt, size in (("fp16", 2), ("fp8", 1)):
            timed = [(r[(dt, lay, True)], lay) for lay in layouts if r[(dt, lay, True)] is not None]
            if not timed:
                best[dt] = float("nan")
                cells += ["failed", "-", "-"]
                continue
            us, lay = min(timed)
            gbs = (2 * b * N_KV * L * D * size + 2 * b * N_Q * D * 2) / (us * 1e-6) / 1e9
            best[dt] = us
            cells += [f"{us:.1f} ({lay})", f"{gbs:.0f}", f"{100 * gbs / copy_gbs:.1f}"]
        cells += [f"{r['sdpa']:.1f}", f"{r['sdpa'] / best['fp16']:.2f}", f"{r['sdpa'] / best['fp8']:.2f}",
                  f"{best['fp16'] / best['fp8']:.2f}"]
        print(f"| {b} | {L // 1024}k | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
