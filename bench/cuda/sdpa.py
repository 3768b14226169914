"""sdpa.py - the peer figure for kvq's fused decode attention: PyTorch's
scaled_dot_product_attention on fp16 KV, FlashAttention and memory-efficient backends
each forced (sdpa_kernel raises if it cannot run), at the shapes bench_attn uses: Llama-3.1-8B decode
(32 query heads, 8 KV heads, dim 128), batch 1/8/32, context 4k/32k/128k.
Grouped-query decode is run as the 4 query heads of a group sharing their KV head
(query [B, 8, 4, 128] against KV [B, 8, L, 128]), the layout FlashAttention decodes.
Each sample replays a CUDA graph of REPS calls, timed with CUDA events; medians.
Prints one SDPA line per shape (bytes = fp16 K + V read). --flash: FlashAttention only."""
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

REPS, SAMPLES = 10, 9
N_Q, N_KV, D = 32, 8, 128


def time_graph(fn):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(REPS):
            fn()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(SAMPLES):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) / REPS)
    times.sort()
    return times[len(times) // 2]


def main():
    quick = "--quick" in sys.argv
    backends = (("flash", SDPBackend.FLASH_ATTENTION),)
    if "--flash" not in sys.argv:
        backends += (("efficient", SDPBackend.EFFICIENT_ATTENTION),)
    dev = torch.cuda.get_device_name(0)
    print(f"SDPA_DEVICE {dev} torch={torch.__version__}", flush=True)
    g = N_Q // N_KV
    for b in (1, 8, 32):
        for L in (4096, 32768, 131072):
            need = 2 * b * N_KV * L * D * 2
            free, _ = torch.cuda.mem_get_info()
            if need + (1 << 30) > free:
                print(f"SDPA batch={b} ctx={L} skipped=memory", flush=True)
                continue
            torch.manual_seed(0)
            k = torch.randn(b, N_KV, L, D, device="cuda", dtype=torch.float16)
            v = torch.randn(b, N_KV, L, D, device="cuda", dtype=torch.float16)
            q = torch.randn(b, N_KV, g, D, device="cuda", dtype=torch.float16)
            out = torch.empty_like(q)

            def make_run(backend):
                def run():
                    with sdpa_kernel(backend):
                        out.copy_(torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=D ** -0.5))
                return run

            # the forced backend must run (it raises otherwise) and agree with the math one
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                o_flash = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=D ** -0.5)
            if L <= 32768 and b <= 8:
                with sdpa_kernel(SDPBackend.MATH):
                    o_ref = torch.nn.functional.scaled_dot_product_attention(
                        q.float(), k.float(), v.float(), scale=D ** -0.5)
                err = ((o_flash.float() - o_ref).norm() / o_ref.norm()).item()
            else:
                err = float("nan")
            bytes_ = 2 * b * N_KV * L * D * 2 + 2 * b * N_Q * D * 2
            for name, backend in backends:
                try:
                    ms = time_graph(make_run(backend))
                except RuntimeError as e:  # the backend refused the shape
                    print(f"SDPA batch={b} ctx={L} backend={name} skipped={str(e)[:60]!r}", flush=True)
                    continue
                print(f"SDPA batch={b} ctx={L} backend={name} us={ms * 1e3:.2f} "
                      f"GBps={bytes_ / (ms * 1e-3) / 1e9:.1f} rel_err_vs_math={err:.2e}", flush=True)
            del k, v, q, out, o_flash
            torch.cuda.empty_cache()
            if quick and L >= 32768:
                break


if __name__ == "__main__":
    main()
