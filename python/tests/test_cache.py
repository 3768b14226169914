# test_cache.py - kvq.Cache: attention against a numpy softmax reference, memory
# accounting, shape checks, the transformers [1, heads, seq, dim] layout, torch dtypes,
# presets, and many threads sharing one cache.
import os
import threading

import numpy as np
import pytest

import kvq

DIM = 64


def gaussian(n, dim=DIM, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def attention_reference(k, v, q, scale):
    """Causal GQA attention in float64: k, v (T, H_kv, D); q (Q, H_q, D), the last Q
    positions of the T tokens."""
    t, h_kv, _ = k.shape
    n_q, h_q, _ = q.shape
    group = h_q // h_kv
    out = np.zeros(q.shape)
    for i in range(n_q):
        pos = t - n_q + i
        for h in range(h_q):
            kh = k[: pos + 1, h // group].astype(np.float64)
            vh = v[: pos + 1, h // group].astype(np.float64)
            s = kh @ q[i, h] * scale
            p = np.exp(s - s.max())
            out[i, h] = (p / p.sum()) @ vh
    return out


def test_cache_attend_matches_numpy_with_exact_window():
    h_kv, d, t = 2, 32, 40
    rng = np.random.default_rng(7)
    k = rng.standard_normal((t, h_kv, d)).astype(np.float32)
    v = rng.standard_normal((t, h_kv, d)).astype(np.float32)
    q = rng.standard_normal((3, 4, d)).astype(np.float32)
    # a window longer than the context keeps every token exact
    cache = kvq.Cache(h_kv, d, "q4_0", "q4_0", window=64)
    cache.append(k[:25], v[:25])
    for i in range(25, t):
        cache.append(k[i], v[i])
    assert len(cache) == t
    out = cache.attend(q)
    assert out.shape == q.shape
    ref = attention_reference(k, v, q, 1.0 / np.sqrt(d))
    # the window holds fp16 keys and values: half precision is the only error
    np.testing.assert_allclose(out, ref, atol=2e-3)


def test_cache_compressed_attend_is_close_and_pool_gives_same_result():
    h_kv, d, t = 2, 64, 128
    rng = np.random.default_rng(8)
    k = rng.standard_normal((t, h_kv, d)).astype(np.float32)
    v = rng.standard_normal((t, h_kv, d)).astype(np.float32)
    q = rng.standard_normal((1, 4, d)).astype(np.float32)
    cache = kvq.Cache(h_kv, d, "q8_0", "q8_0")
    cache.append(k, v)
    out = cache.attend(q)
    ref = attention_reference(k, v, q, 1.0 / np.sqrt(d))
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert rel < 0.05, rel
    pool = kvq.ThreadPool(3)
    assert pool.size >= 3
    np.testing.assert_array_equal(cache.attend(q, pool=pool), out)


def test_cache_memory_accounts_for_every_byte():
    cache = kvq.Cache(2, 64, "turboquant_rvq:bits=1,residuals=2", "mse:bits=2", window=4)
    rng = np.random.default_rng(9)
    cache.append(rng.standard_normal((20, 2, 64)), rng.standard_normal((20, 2, 64)))
    m = cache.memory()
    assert m["n_tokens"] == 20 == len(cache)
    parts = ("key_codes", "value_codes", "window", "outliers", "shared", "overhead")
    assert m["total"] == sum(m[p] for p in parts)
    assert m["key_codes"] > 0 and m["value_codes"] > 0
    cache.reset()
    assert len(cache) == 0


def test_cache_validates_shapes_and_specs():
    cache = kvq.Cache(2, 16, "fp16", "fp16")
    with pytest.raises(ValueError):
        cache.append(np.zeros((3, 2, 16)), np.zeros((4, 2, 16)))
    with pytest.raises(ValueError):
        cache.append(np.zeros((3, 3, 16)), np.zeros((3, 3, 16)))
    cache.append(np.ones((2, 2, 16)), np.ones((2, 2, 16)))
    with pytest.raises(ValueError):
        cache.attend(np.zeros((1, 3, 16)))  # 3 query heads over 2 kv heads
    with pytest.raises(kvq.KvqError) as e:
        kvq.Cache(2, 16, "fp16", "bogus")
    assert e.value.name == "PARSE"


def test_cache_takes_the_transformers_layout_and_torch_dtypes():
    torch = pytest.importorskip("torch")
    h_kv, h_q, d, t = 2, 4, 32, 12
    g = torch.Generator().manual_seed(3)
    k = torch.randn(1, h_kv, t, d, generator=g)
    v = torch.randn(1, h_kv, t, d, generator=g)
    q = torch.randn(1, h_q, 3, d, generator=g)
    ref_cache = kvq.Cache(h_kv, d, "fp16", "fp16")
    ref_cache.append(k[0].transpose(0, 1).numpy(), v[0].transpose(0, 1).numpy())
    ref = ref_cache.attend(q[0].transpose(0, 1).numpy())
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        cache = kvq.Cache(h_kv, d, "fp16", "fp16")
        cache.append(k.to(dtype), v.to(dtype))
        assert len(cache) == t
        out = cache.attend(q.to(dtype))
        assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.shape == q.shape
        tol = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 4e-2}[dtype]
        np.testing.assert_allclose(out[0].transpose(0, 1).float().numpy(), ref, atol=tol)
    with pytest.raises(ValueError):
        kvq.Cache(h_kv, d, "fp16", "fp16").append(torch.zeros(2, h_kv, 1, d), torch.zeros(2, h_kv, 1, d))


def test_numpy_4d_layout_matches_token_major():
    h_kv, d = 2, 32
    rng = np.random.default_rng(5)
    k = rng.standard_normal((7, h_kv, d)).astype(np.float32)
    v = rng.standard_normal((7, h_kv, d)).astype(np.float32)
    q = rng.standard_normal((2, 4, d)).astype(np.float32)
    a = kvq.Cache(h_kv, d, "q8_0", "q8_0")
    a.append(k, v)
    b = kvq.Cache(h_kv, d, "q8_0", "q8_0")
    b.append(k.transpose(1, 0, 2)[None], v.transpose(1, 0, 2)[None])
    out_b = b.attend(q.transpose(1, 0, 2)[None])
    assert out_b.shape == (1, 4, 2, d)
    np.testing.assert_array_equal(out_b[0].transpose(1, 0, 2), a.attend(q))


def test_presets_build_caches_like_the_cli():
    names = kvq.presets()
    if not names:
        pytest.skip("this libkvq has no cache presets")
    assert "q4" in names
    cache = kvq.Cache(2, 64, preset="q4")
    rng = np.random.default_rng(1)
    # q4's keys are coded a 128-token chunk at a time, once it has left the 8-token window
    cache.append(rng.standard_normal((200, 2, 64)), rng.standard_normal((200, 2, 64)))
    assert len(cache) == 200 and cache.memory()["key_codes"] > 0
    assert cache.memory()["total"] < 2 * 200 * 2 * 64 * 2  # below fp16
    with pytest.raises(kvq.KvqError):
        kvq.Cache(2, 64, preset="no_such_preset")
    with pytest.raises(ValueError):
        kvq.Cache(2, 64, preset="q4", key_spec="fp16")
    # one string as the CLI takes it: preset or KSPEC+VSPEC, then @options
    c = kvq.Cache(2, 64, spec="q4@window=16,sink=2")
    assert (c.window, c.n_sink) == (16, 2) and "bits=4" in c.key_spec
    c = kvq.Cache(2, 64, spec="mse:bits=4+mse:bits=2")
    assert "bits=4" in c.key_spec and "bits=2" in c.value_spec
    p = kvq.Cache(2, 64, preset="q4")
    assert p.key_spec == kvq.Cache(2, 64, spec="q4").key_spec and p.key_spec.startswith("channel")
    with pytest.raises(kvq.KvqError):
        kvq.Cache(2, 64, spec="q4@window=x")


def test_preset_layer_plans_resolve_as_in_the_library():
    if not kvq.presets() or kvq._native._cache_config_parse_layer is None:
        pytest.skip("this libkvq has no per-layer preset plans")
    for name in kvq.presets():
        base = kvq.cache_config(3, 64, preset=name)
        plan = [kvq.cache_config(3, 64, preset=name, layer=l, n_layers=30) for l in range(30)]
        # the same layers from a spec with options, and from the C table's sixths
        spec = [kvq.cache_config(3, 64, spec=name + "@window=16", layer=l, n_layers=30) for l in range(30)]
        assert [c.key.bits for c in spec] == [c.key.bits for c in plan]
        assert all(c.window == 16 for c in spec)
        more_k = [l for l in range(30) if plan[l].key.bits == base.key.bits + 1]
        more_v = [l for l in range(30) if plan[l].value.bits == base.value.bits + 1]
        assert all(plan[l].key.bits == base.key.bits for l in range(30) if l not in more_k)
        assert all(plan[l].value.bits == base.value.bits for l in range(30) if l not in more_v)
        if name == "q3":  # values of the first, fourth and fifth sixths
            assert more_k == [] and more_v == list(range(0, 5)) + list(range(15, 25))
        if name == "q4":  # keys of the second, fourth and fifth sixths
            assert more_k == list(range(5, 10)) + list(range(15, 25)) and more_v == []
        # at most a quarter bit a number more on average: one bit on one side of a layer
        # is half a bit a number there
        assert 0.5 * (len(more_k) + len(more_v)) / 30 <= 0.25
    with pytest.raises(ValueError):
        kvq.cache_config(3, 64, preset="q4", layer=30, n_layers=30)
    with pytest.raises(ValueError):
        kvq.cache_config(3, 64, preset="q4", layer=1)


def test_sliding_layers_take_the_presets_extra_bits():
    """A preset's sliding-window layer codes keys (and q3's, q2's values) one bit wider:
    the ctypes mirror carries the two fields to the library, and the options set them."""
    if not kvq.presets():
        pytest.skip("this libkvq has no cache presets")
    cfg = kvq.cache_config(2, 64, preset="q3")
    if not hasattr(cfg, "sliding_key_bits"):
        pytest.skip("this libkvq's cache config has no sliding-layer bits")
    assert (cfg.sliding_key_bits, cfg.sliding_value_bits) == (1, 1)
    off = kvq.cache_config(2, 64, spec="q3@slide_kbits=0,slide_vbits=0")
    assert (off.sliding_key_bits, off.sliding_value_bits) == (0, 0)
    rng = np.random.default_rng(3)
    k, v = rng.standard_normal((300, 2, 64)), rng.standard_normal((300, 2, 64))
    held = {}
    for name, spec in (("slid", "q3"), ("off", "q3@slide_kbits=0,slide_vbits=0")):
        c = kvq.Cache(2, 64, spec=spec, sliding_window=256)
        c.append(k, v)
        held[name] = c.memory()
    # 4-bit keys and 3-bit values against 3 and 2 in the same 300 tokens
    assert held["slid"]["key_codes"] > held["off"]["key_codes"]
    assert held["slid"]["value_codes"] > held["off"]["value_codes"]
    # a full-attention layer: the extra bits do nothing
    full = [kvq.Cache(2, 64, spec=s) for s in ("q3", "q3@slide_kbits=0,slide_vbits=0")]
    for c in full:
        c.append(k, v)
    assert full[0].memory() == full[1].memory()


def test_observed_queries_weigh_channel_key_bits():
    """Queries that read 16 of 64 channels hard: observed before the keys are appended,
    they make a q2 cache's attention for such queries more accurate than the ranges
    alone; bad shapes and NaN are refused; other key methods accept and ignore them."""
    h_kv, h_q, d, t = 2, 4, 64, 300
    rng = np.random.default_rng(11)
    k = rng.standard_normal((t, h_kv, d)).astype(np.float16).astype(np.float32)
    v = rng.standard_normal((t, h_kv, d)).astype(np.float16).astype(np.float32)
    q = rng.standard_normal((24, h_q, d)).astype(np.float32)
    q[:, :, 16:] *= 0.03
    q[:, :, :16] *= 1.5
    errs = []
    for observe in (False, True):
        cache = kvq.Cache(h_kv, d, spec="channel:bits=2+fp16@sink=1,window=8,chunk=64")
        if observe:
            cache.observe_queries(q)
        cache.append(k, v)
        out = cache.attend(q[-1:], scale=0.125)
        ref = attention_reference(k, v, q[-1:], 0.125)
        errs.append(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    assert errs[1] < 0.6 * errs[0], errs
    cache = kvq.Cache(h_kv, d, preset="q2")
    with pytest.raises(ValueError):
        cache.observe_queries(q[:, :3])
    with pytest.raises(ValueError):
        cache.observe_queries(q[:, :, :32])
    bad = q.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(kvq.KvqError):
        cache.observe_queries(bad)
    kvq.Cache(h_kv, d, "mse:bits=4", "mse:bits=4").observe_queries(q)


def test_threads_sharing_a_cache_give_the_serial_result():
    # Several threads append to and attend on one cache: the calls take turns, so each
    # thread's attend sees a consistent cache and nothing crashes; then the same
    # appends made serially give the same final cache (attention equal to the bit).
    h_kv, d = 2, 64
    rng = np.random.default_rng(11)
    blocks = [
        (rng.standard_normal((8, h_kv, d)).astype(np.float32),
         rng.standard_normal((8, h_kv, d)).astype(np.float32))
        for _ in range(24)
    ]
    q = rng.standard_normal((1, 4, d)).astype(np.float32)
    shared = kvq.Cache(h_kv, d, "turboquant_rvq:bits=1,residuals=2", "mse:bits=2", window=4)
    pool = kvq.ThreadPool(2)
    order = []
    order_lock = threading.Lock()
    errors = []

    def work(i):
        try:
            k, v = blocks[i]
            with order_lock:  # append order decides the cache contents: record it
                shared.append(k, v)
                order.append(i)
            for _ in range(3):
                out = shared.attend(q, pool=pool if i % 2 else None)
                assert np.all(np.isfinite(out))
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(blocks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    serial = kvq.Cache(h_kv, d, "turboquant_rvq:bits=1,residuals=2", "mse:bits=2", window=4)
    for i in order:
        serial.append(*blocks[i])
    assert len(shared) == len(serial) == 24 * 8
    np.testing.assert_array_equal(shared.attend(q), serial.attend(q))
    ms, mr = shared.memory(), serial.memory()
    for part in ("key_codes", "value_codes", "window", "n_tokens"):
        assert ms[part] == mr[part], part


def test_attend_from_many_threads_on_one_cache_is_deterministic():
    # attend works in scratch inside the cache: without the lock, concurrent attends on
    # one cache overwrite each other's scratch and give wrong outputs.
    h_kv, d, t = 2, 64, 512
    rng = np.random.default_rng(13)
    cache = kvq.Cache(h_kv, d, "turboquant_rvq:bits=1,residuals=2", "mse:bits=2")
    cache.append(rng.standard_normal((t, h_kv, d)), rng.standard_normal((t, h_kv, d)))
    qs = [rng.standard_normal((1, 8, d)).astype(np.float32) for _ in range(12)]
    serial = [cache.attend(q) for q in qs]
    got = [None] * len(qs)

    def work(i):
        for _ in range(4):
            got[i] = cache.attend(qs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(qs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for a, b in zip(got, serial):
        np.testing.assert_array_equal(a, b)


def test_errors_carry_the_library_detail():
    # the C library's per-thread detail line comes with the exception
    with pytest.raises(kvq.KvqError) as e:
        kvq.Cache(3, 64, spec="mse:bits=4@outliers=70")
    assert "outliers 70 must be below head_dim 64" in str(e.value)
    assert kvq.last_error() == ""  # taken once
