# test_hf.py - kvq.hf on tiny randomly initialised transformers models built here (no
# hub): greedy generation through a KVQCache at fp16 equals transformers' DynamicCache;
# at 4 bits the logits stay close; the layers hold codes only (memory = codes); batches,
# sliding-window layers, presets, and the refusals. Skips without torch/transformers.
import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if int(transformers.__version__.split(".")[0]) < 5:
    pytest.skip("kvq.hf needs transformers >= 5", allow_module_level=True)

import kvq  # noqa: E402
from kvq.hf import KVQCache, KVQLayer  # noqa: E402
from transformers import DynamicCache  # noqa: E402

PROMPT = 12
NEW = 20
# transformers 5.24 renamed generate's and forward's past_key_values to cache
_fwd = inspect.signature(transformers.LlamaModel.forward).parameters
CACHE_KW = "cache" if "cache" in _fwd else "past_key_values"


def tiny_llama(seed=0, layers=2, hidden=128):
    # head_dim = hidden / 4: 32 by default; the GPU kernels take 64, 128 and 256
    cfg = transformers.LlamaConfig(
        vocab_size=256, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


def prompt(batch=1, n=PROMPT, seed=1):
    return torch.randint(0, 256, (batch, n), generator=torch.Generator().manual_seed(seed))


def greedy(model, ids, cache, new=NEW):
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, **{CACHE_KW: cache})


def test_fp16_codes_generate_the_dynamic_cache_tokens():
    model = tiny_llama()
    ids = prompt()
    ref = greedy(model, ids, DynamicCache(config=model.config))
    cache = KVQCache(model, key_spec="fp16", value_spec="fp16")
    assert model.config._attn_implementation == "kvq"
    out = greedy(model, ids, cache)
    assert torch.equal(out, ref)
    assert cache.get_seq_length() == PROMPT + NEW - 1
    assert all(isinstance(layer, KVQLayer) for layer in cache.layers)


def test_batch_rows_and_the_deprecated_keyword():
    model = tiny_llama(seed=3)
    ids = prompt(batch=3, seed=4)
    ref = greedy(model, ids, DynamicCache(config=model.config))
    cache = KVQCache(model, key_spec="fp16", value_spec="fp16", n_threads=1)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                             past_key_values=cache)
    assert torch.equal(out, ref)


def step_logits(model, tokens, cache):
    """Logits of every position, fed as the prompt and then one token at a time (the
    path generate takes), through the given cache."""
    with torch.no_grad():
        out = [model(tokens[:, :PROMPT], use_cache=True, **{CACHE_KW: cache}).logits]
        for i in range(PROMPT, tokens.shape[1]):
            out.append(model(tokens[:, i : i + 1], use_cache=True, **{CACHE_KW: cache}).logits)
    return torch.cat(out, dim=1)[0].float().cpu().numpy()


def test_four_bit_codes_keep_logits_close_and_hold_only_codes():
    model = tiny_llama(seed=5)
    tokens = greedy(model, prompt(seed=6), DynamicCache(config=model.config))
    ref = step_logits(model, tokens, DynamicCache(config=model.config))
    cache = KVQCache(model, key_spec="mse:bits=4", value_spec="mse:bits=4")
    got = step_logits(model, tokens, cache)
    rel = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
    # (a random tiny model's logits are flat, std about 0.2: q8_0 codes give 0.5 %
    # relative error here, 4-bit Lloyd-Max codes about 9 %, 1-bit about 50 %)
    assert rel.max() < 0.15, rel.max()
    # coarser codes move the logits further: the comparison can tell them apart
    cache2 = KVQCache(model, key_spec="mse:bits=1", value_spec="mse:bits=1")
    rel2 = np.linalg.norm(step_logits(model, tokens, cache2) - ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert rel2.mean() > 3 * rel.mean()
    # memory held: exactly the codes of every token, in every layer (no decoded copy)
    n = tokens.shape[1]
    code = kvq.Quantizer("mse:bits=4", 32).code_size
    m = cache.memory()
    layers = model.config.num_hidden_layers
    assert m["key_codes"] == m["value_codes"] == layers * 2 * n * code
    assert m["window"] == 0 and m["exact_layers"] == 0
    assert m["key_codes"] + m["value_codes"] < m["fp16"] / 3
    for layer in cache.layers:
        assert layer.keys is None and layer.values is None


def test_sliding_window_layers_stay_exact_and_bounded():
    cfg = transformers.Qwen2Config(
        vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        use_sliding_window=True, sliding_window=6, max_window_layers=1,
    )
    assert "sliding_attention" in cfg.layer_types
    torch.manual_seed(7)
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    ids = prompt(batch=2, seed=8)
    ref = greedy(model, ids, DynamicCache(config=cfg))
    # sliding layers on kvq codes (the C cache's sliding window): the same tokens
    cache = KVQCache(model, key_spec="fp16", value_spec="fp16")
    out = greedy(model, ids, cache)
    assert torch.equal(out, ref)
    assert all(isinstance(layer, KVQLayer) for layer in cache.layers)
    assert [layer.is_sliding for layer in cache.layers] == [
        t == "sliding_attention" for t in cfg.layer_types]
    assert cache.memory()["exact_layers"] == 0
    # or kept as transformers' exact windows, which hold at most their window
    exact = KVQCache(model, key_spec="fp16", value_spec="fp16", exact_sliding=True)
    assert torch.equal(greedy(model, ids, exact), ref)
    kinds = [type(layer).__name__ for layer in exact.layers]
    assert kinds[0] == "KVQLayer" and kinds.count("KVQLayer") == cfg.layer_types.count("full_attention")
    m = exact.memory()
    assert 0 < m["exact_layers"] <= 2 * 2 * 2 * cfg.sliding_window * 32 * 4 * 2
    # past the window, a sliding layer's codes stop growing with the text: a long
    # generation holds no more codes in a sliding layer than a short one plus a chunk
    long_cache = KVQCache(model, key_spec="mse:bits=4", value_spec="mse:bits=4")
    greedy(model, prompt(batch=1, n=100, seed=9), long_cache, new=200)
    full, local = long_cache.layers[0].memory(), long_cache.layers[1].memory()
    assert full["key_codes"] > 4 * local["key_codes"] > 0


def test_exact_window_and_presets():
    model = tiny_llama(seed=9)
    ids = prompt(seed=10)
    ref = greedy(model, ids, DynamicCache(config=model.config), new=8)
    # a window longer than the whole text keeps every token exact: the tokens match
    cache = KVQCache(model, key_spec="mse:bits=1", value_spec="mse:bits=1", window=64)
    assert torch.equal(greedy(model, ids, cache, new=8), ref)
    m = cache.memory()
    assert m["window"] > 0 and m["key_codes"] == 0  # every token still in the window
    if kvq.presets():
        c = KVQCache(model, "q4")
        assert c.spec == "q4" and "bits=4" in c.key_spec
        greedy(model, ids, c, new=150)  # past the first 128-token chunk and the exact newest 8
        assert c.memory()["key_codes"] > 0
        # the preset's per-layer plan, as the CLI resolves it: on 6 layers, one more value
        # bit in layers 0, 3 and 4
        six = KVQCache(tiny_llama(seed=9, layers=6), "q3")
        kb = [layer._config.key.bits for layer in six.layers]
        vb = [layer._config.value.bits for layer in six.layers]
        assert kb == [3, 3, 3, 3, 3, 3] and vb == [3, 2, 2, 3, 3, 2]
        # channel keys see each step's queries on the CPU path (they weigh the channels'
        # bits): other codes than without, the same closeness to the exact logits
        tokens = greedy(model, ids, DynamicCache(config=model.config), new=150)
        exact = step_logits(model, tokens, DynamicCache(config=model.config))
        seen = step_logits(model, tokens, KVQCache(model, "q2", use_cuda=False))
        blind = step_logits(model, tokens, KVQCache(model, "q2", use_cuda=False, observe_queries=False))
        assert not np.array_equal(seen, blind)
        err = [np.linalg.norm(x - exact) / np.linalg.norm(exact) for x in (seen, blind)]
        assert err[0] < 1.5 * err[1] + 1e-3, err
        with pytest.raises(kvq.KvqError):
            KVQCache(model, preset="no_such_preset")
        # the CLI's cache strings: KSPEC+VSPEC@options; window 64 keeps this text exact
        c = KVQCache(model, "mse:bits=1+mse:bits=1@window=64")
        assert c.config.window == 64
        assert torch.equal(greedy(model, ids, c, new=8), ref)


def test_refusals():
    model = tiny_llama()
    with pytest.raises(kvq.KvqError):
        KVQCache(model, key_spec="bogus")
    cache = KVQCache(model, key_spec="fp16", value_spec="fp16")
    ids = prompt(batch=2)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    with pytest.raises(NotImplementedError):
        with torch.no_grad():
            model.generate(ids, attention_mask=mask, max_new_tokens=2, **{CACHE_KW: cache})


def test_other_caches_still_work_after_the_switch():
    model = tiny_llama(seed=11)
    ids = prompt(seed=12)
    ref = greedy(model, ids, DynamicCache(config=model.config), new=6)
    KVQCache(model, key_spec="fp16", value_spec="fp16")  # switches the model to "kvq"
    assert torch.equal(greedy(model, ids, DynamicCache(config=model.config), new=6), ref)


def test_cuda_refusal_names_what_the_gpu_path_lacks():
    from kvq.hf import cuda_refusal

    model = tiny_llama(hidden=256)
    no_gpu = "libkvq has no CUDA build or sees no GPU"
    on_gpu = kvq.cuda_devices() > 0
    exact = KVQCache(model.config, "mse:bits=4+mse:bits=4@window=8,sink=1,center=1").config
    why = cuda_refusal(exact)
    assert why is not None and "window" in why and "sink" in why and "center" in why
    assert no_gpu not in why  # the config's reasons come first, on any machine
    # the refusal's own advice: the codes alone
    alone = KVQCache(model.config, "mse:bits=4+mse:bits=4@window=0,sink=0,center=0").config
    assert cuda_refusal(alone) == (None if on_gpu else no_gpu)
    # a method the GPU kernels lack: named, with its role
    why = cuda_refusal(KVQCache(model.config, "turboquant_prod:bits=3+mse:bits=4").config)
    assert why is not None and "turboquant_prod keys" in why and "value" not in why.split(";")[0]
    # channel keys (the presets) run on the GPU with their window and sinks, not with
    # values the chan kernels lack
    big = transformers.LlamaConfig(hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                                   num_hidden_layers=1, vocab_size=256)
    if kvq.presets():
        assert cuda_refusal(KVQCache(big, "q4").config) == (None if on_gpu else no_gpu)
    why = cuda_refusal(KVQCache(big, "channel:bits=4+q8_0").config)
    assert why is not None and "q8_0" in why
    cfg = transformers.Qwen2Config(
        vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=6,
        max_window_layers=1,
    )
    sliding = KVQCache(cfg, key_spec="mse:bits=4", value_spec="mse:bits=4")
    reasons = [cuda_refusal(layer._config) for layer in sliding.layers]
    assert [r is not None and "sliding" in r for r in reasons] == [
        t == "sliding_attention" for t in cfg.layer_types]
    # head dims the kernels lack
    small = KVQCache(tiny_llama().config, "mse:bits=4+mse:bits=4@window=0,sink=0,center=0").config
    assert "head dims" in cuda_refusal(small)


def test_cuda_layers_run_the_gpu_kernels():
    if not torch.cuda.is_available() or kvq.cuda_devices() == 0:
        pytest.skip("no CUDA device for torch and libkvq")
    model = tiny_llama(seed=13, hidden=256).to("cuda")
    ids = prompt(seed=14).to("cuda")
    ref = greedy(model, ids, DynamicCache(config=model.config))
    cache = KVQCache(model, key_spec="fp16", value_spec="fp16")
    out = greedy(model, ids, cache)
    assert all(layer._gpu is not None for layer in cache.layers)
    assert torch.equal(out, ref)
    # 4-bit codes on the GPU: logits as close to DynamicCache's as the CPU path's
    tokens = ref
    exact = step_logits(model, tokens, DynamicCache(config=model.config))
    gpu = KVQCache(model, key_spec="mse:bits=4", value_spec="mse:bits=4")
    a = step_logits(model, tokens, gpu)
    assert all(layer._gpu is not None for layer in gpu.layers)
    rel = np.linalg.norm(a - exact, axis=1) / np.linalg.norm(exact, axis=1)
    assert rel.max() < 0.15, rel.max()
    cpu = KVQCache(model, key_spec="mse:bits=4", value_spec="mse:bits=4", use_cuda=False)
    b = step_logits(model, tokens, cpu)
    assert all(layer._gpu is None for layer in cpu.layers)
    rel_cpu = np.linalg.norm(b - exact, axis=1) / np.linalg.norm(exact, axis=1)
    assert rel[PROMPT:].mean() < 2 * rel_cpu[PROMPT:].mean() + 0.01
    m = gpu.memory()
    assert m["key_codes"] == model.config.num_hidden_layers * 2 * tokens.shape[1] * 34  # 64 * 4 / 8 + norm


def test_cuda_presets_run_the_gpu_kernels():
    """The presets' channel keys on the GPU: chunks coded on the device as the CPU codes
    them, attention over sinks, coded chunks and the exact tail; logits next to the CPU
    path's (which holds its tail as q8_0 where the GPU holds fp16)."""
    if not torch.cuda.is_available() or kvq.cuda_devices() == 0 or not kvq.presets():
        pytest.skip("no CUDA device for torch and libkvq, or no presets")
    from kvq.hf import _GpuChan

    model = tiny_llama(seed=21, hidden=256).to("cuda")
    tokens = greedy(model, prompt(seed=22).to("cuda"), DynamicCache(config=model.config), new=150)
    exact = step_logits(model, tokens, DynamicCache(config=model.config))
    for preset in ("q4", "q3"):
        gpu = KVQCache(model, preset)
        a = step_logits(model, tokens, gpu)
        assert all(isinstance(layer._gpu, _GpuChan) for layer in gpu.layers)
        m = gpu.memory()
        assert m["key_codes"] > 0 and m["value_codes"] > 0  # chunks were coded on the device
        # both paths show the queries to the channels' bits
        cpu = KVQCache(model, preset, use_cuda=False)
        b = step_logits(model, tokens, cpu)
        assert all(layer._gpu is None for layer in cpu.layers)
        rel = np.linalg.norm(a - exact, axis=1) / np.linalg.norm(exact, axis=1)
        rel_cpu = np.linalg.norm(b - exact, axis=1) / np.linalg.norm(exact, axis=1)
        gap = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
        print("kvq.hf %s on CUDA: logits %.4f from exact (CPU path %.4f), %.4f from the CPU path (max %.4f)"
              % (preset, rel[PROMPT:].mean(), rel_cpu[PROMPT:].mean(), gap[PROMPT:].mean(), gap.max()))
        # the same codes: no further from exact than the CPU path, and closer to it at every
        # step than it is to exact on average (the tails differ: fp16 here, q8_0 rows there,
        # and q4's 136-token ring holds most of these 162 tokens)
        assert rel[PROMPT:].mean() < 1.5 * rel_cpu[PROMPT:].mean() + 0.01, (preset, rel.mean(), rel_cpu.mean())
        assert gap.max() < rel_cpu[PROMPT:].mean(), (preset, gap.max(), rel_cpu.mean())
        # the queries moved some channel's bits (kvq_cuda_chan_observe_queries)
        blind = KVQCache(model, preset, observe_queries=False)
        step_logits(model, tokens, blind)

        def bits(cache):
            out = []
            for layer in cache.layers:
                g = layer._gpu
                L, rows, d = g.layout, g.batch * g.n_kv, g.head_dim
                heads = g.buf[L.heads : L.heads + rows * L.head_bytes].view(rows, L.head_bytes)
                out.append(heads[:, :d].cpu())
            return out

        assert any(not torch.equal(a, b) for a, b in zip(bits(gpu), bits(blind))), preset


def test_cuda_preset_prompt_in_one_call_writes_the_per_token_bytes(monkeypatch):
    """A preset's prompt goes into the GPU cache with kvq_cuda_chan_append_n (one call per
    layer, or per piece of workspace): the device buffers and the generated tokens equal
    those of one append call per token (whose codes equal the CPU's)."""
    if not torch.cuda.is_available() or kvq.cuda_devices() == 0 or not kvq.presets():
        pytest.skip("no CUDA device for torch and libkvq, or no presets")
    from kvq import _native
    from kvq.hf import _GpuChan

    if _native._cuda_chan_append_n is None:
        pytest.skip("libkvq without kvq_cuda_chan_append_n")
    model = tiny_llama(seed=31, hidden=256).to("cuda")
    # 300 tokens: two 128-token chunks coded from the prompt, a 136-token ring overwritten
    ids = prompt(batch=2, n=300, seed=32).to("cuda")

    def run(piece_bytes=None, per_token=False):
        with monkeypatch.context() as m:
            if piece_bytes is not None:
                m.setattr(_GpuChan, "APPEND_N_BYTES", piece_bytes)
            if per_token:
                m.setattr(_native, "_cuda_chan_append_n", None)
            cache = KVQCache(model, "q4")
            out = greedy(model, ids, cache, new=6)
        assert all(isinstance(layer._gpu, _GpuChan) for layer in cache.layers)
        return out, [layer._gpu.buf.cpu() for layer in cache.layers]

    ref_out, ref_bufs = run(per_token=True)
    # the whole prompt at once, pieces of 17 tokens (2 rows x 2 kv heads x (64 x 4 + 34)
    # bytes a token), and of one
    for piece_bytes in (None, 17 * 2 * 2 * (64 * 4 + 34) + 16, 1):
        out, bufs = run(piece_bytes=piece_bytes)
        assert torch.equal(out, ref_out), piece_bytes
        for li, (a, b) in enumerate(zip(bufs, ref_bufs)):
            assert a.shape == b.shape and torch.equal(a, b), (piece_bytes, li, int((a != b).sum()))


def test_cuda_several_new_tokens_on_a_filled_cache():
    """After the prompt, a forward of several tokens at once (a chat turn appended to a
    kept cache, a draft's check) goes through the GPU caches token by token: the logits
    equal feeding those tokens one per step, for the presets and for the other codes."""
    if not torch.cuda.is_available() or kvq.cuda_devices() == 0:
        pytest.skip("no CUDA device for torch and libkvq")
    model = tiny_llama(seed=41, hidden=256).to("cuda")
    tokens = prompt(n=PROMPT + 150, seed=42).to("cuda")
    specs = ["mse:bits=4+mse:bits=4"] + (["q4"] if kvq.presets() else [])
    for spec in specs:
        one = step_logits(model, tokens, KVQCache(model, spec))
        cache = KVQCache(model, spec)
        with torch.no_grad():
            out = [model(tokens[:, :PROMPT], use_cache=True, **{CACHE_KW: cache}).logits]
            # 150 tokens in pieces of 1, 5, 60 and 84: q4's 128-token chunks get coded inside
            for a, b in ((PROMPT, PROMPT + 1), (PROMPT + 1, PROMPT + 6), (PROMPT + 6, PROMPT + 66),
                         (PROMPT + 66, PROMPT + 150)):
                out.append(model(tokens[:, a:b], use_cache=True, **{CACHE_KW: cache}).logits)
        got = torch.cat(out, dim=1)[0].float().cpu().numpy()
        assert all(layer._gpu is not None for layer in cache.layers)
        assert cache.get_seq_length() == PROMPT + 150
        # the same appends and attention calls; only the model's other products see
        # several rows at once
        rel = np.linalg.norm(got - one, axis=1) / np.linalg.norm(one, axis=1)
        assert rel.max() < 1e-3, (spec, rel.max())


class _FakeGpu:
    """Stands in for a GPU layer on the CPU: records calls; observe() only where the layer
    kind has it (channel keys), as kvq.hf's _GpuChan and _GpuCodes."""

    def __init__(self, chan, open_until):
        self.calls = []
        self._open_until = open_until
        if chan:
            self.observe = lambda q, n_past: self.calls.append(("observe", int(q.shape[2]), n_past))

    def observing(self, n_past):
        return hasattr(self, "observe") and n_past < self._open_until

    def append(self, k, v, n_past):
        self.calls.append(("append", int(k.shape[2]), n_past))

    def attend(self, query, scaling, n_tokens):
        self.calls.append(("attend", int(query.shape[2]), n_tokens))
        b, hq, _, d = query.shape
        return torch.zeros((b, 1, hq, d), dtype=query.dtype)


def test_gpu_token_loop_observes_only_where_a_layer_can():
    """The GPU path's bookkeeping, on the CPU with stand-in layers: several new tokens on a
    filled cache are appended and attended one at a time, and only a channel-key layer whose
    bits are still open is shown their queries (a codes layer has no observe(); calling it
    broke this loop once, and only the GPU test saw it)."""
    model = tiny_llama()
    for chan, open_until, want_observed in ((False, 10**9, []), (True, 14, [12, 13]), (True, 0, [])):
        layer = KVQCache(model, "mse:bits=4+mse:bits=4").layers[0]
        k = torch.zeros((1, 2, 12, 32))
        layer.lazy_initialization(k, k)
        layer._codes, layer._gpu = None, _FakeGpu(chan, open_until)
        layer.n_tokens = 12
        kk = torch.zeros((1, 2, 4, 32))
        layer.update(kk, kk)
        out = layer.attend(torch.zeros((1, 4, 4, 32)), 1.0)
        assert out.shape == (1, 4, 4, 32)
        calls = layer._gpu.calls
        assert [c for c in calls if c[0] == "append"] == [("append", 1, 12 + t) for t in range(4)]
        assert [c for c in calls if c[0] == "attend"] == [("attend", 1, 13 + t) for t in range(4)]
        assert [c[2] for c in calls if c[0] == "observe"] == want_observed, (chan, calls)
        assert layer.get_seq_length() == 16
