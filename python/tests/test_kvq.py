# test_kvq.py - the Python bindings against the library: round-trips, determinism,
# save/load, errors surfacing as KvqError with the library's sentence, shape checks,
# and the cache's attention against a numpy softmax reference.
import os

import numpy as np
import pytest

import kvq

DIM = 64


def gaussian(n, dim=DIM, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_library_identifies_itself():
    assert kvq.version().count(".") == 2
    assert kvq.cpu_isa() in ("scalar", "avx2", "avx512", "neon")


def test_fp16_round_trip_is_within_half_precision():
    q = kvq.Quantizer("fp16", DIM)
    x = gaussian(50)
    codes = q.encode(x)
    assert codes.dtype == np.uint8 and codes.shape == (50, q.code_size)
    assert q.code_size >= DIM * 2
    y = q.decode(codes)
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, x, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    "spec,min_cos",
    [
        ("q8_0", 0.999),
        ("q4_0", 0.98),
        ("mse:bits=4", 0.99),
        ("turboquant_rvq:bits=2,residuals=2", 0.97),
        ("turboquant_rvq:bits=1,residuals=2", 0.90),
    ],
)
def test_lossy_round_trip_keeps_direction(spec, min_cos):
    q = kvq.Quantizer(spec, DIM, seed=3)
    x = gaussian(200, seed=1)
    y = q.decode(q.encode(x))
    cos = np.sum(x * y, axis=1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    assert cos.mean() >= min_cos, (spec, cos.mean())


def test_single_vector_shapes():
    q = kvq.Quantizer("mse:bits=2", DIM, seed=1)
    x = gaussian(1)[0]
    c = q.encode(x)
    assert c.shape == (q.code_size,)
    assert q.decode(c).shape == (DIM,)
    assert np.isscalar(q.score(x, c)) or np.ndim(q.score(x, c)) == 0
    np.testing.assert_array_equal(c, q.encode(x[None])[0])


def test_same_seed_same_codes_other_seed_other_codes():
    x = gaussian(100, seed=5)
    a = kvq.Quantizer("turboquant_rvq:bits=1,residuals=2", DIM, seed=11).encode(x)
    b = kvq.Quantizer("turboquant_rvq:bits=1,residuals=2", DIM, seed=11).encode(x)
    c = kvq.Quantizer("turboquant_rvq:bits=1,residuals=2", DIM, seed=12).encode(x)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_seed_and_spec_round_trip_through_the_library():
    q = kvq.Quantizer("mse:bits=3", DIM, seed=123456789012)
    assert q.seed == 123456789012 and q.dim == DIM
    again = kvq.Quantizer(q.spec, DIM, seed=q.seed)
    x = gaussian(20)
    np.testing.assert_array_equal(q.encode(x), again.encode(x))


def test_score_matches_decode_dot_for_fp16():
    q = kvq.Quantizer("fp16", DIM)
    x = gaussian(30, seed=2)
    query = gaussian(1, seed=9)[0]
    codes = q.encode(x)
    s = q.score(query, codes)
    assert s.shape == (30,)
    np.testing.assert_allclose(s, q.decode(codes) @ query, rtol=1e-4, atol=1e-3)


def test_qjl_score_tracks_true_inner_products():
    # QJL's estimator has variance about (pi/2) |q|^2 |x|^2 / m: with m = 8 * dim sign
    # bits the expected correlation with the truth is about 0.92.
    q = kvq.Quantizer("qjl:proj_dim=%d" % (8 * DIM), DIM, seed=4)
    x = gaussian(400, seed=6)
    query = gaussian(1, seed=8)[0]
    s = q.score(query, q.encode(x))
    truth = x @ query
    assert np.corrcoef(s, truth)[0, 1] > 0.8


def test_save_load_gives_identical_codes(tmp_path):
    q = kvq.Quantizer("turboquant_rvq:bits=1,residuals=2", DIM, seed=21)
    path = str(tmp_path / "q.safetensors")
    q.save(path)
    assert os.path.getsize(path) > 8
    q2 = kvq.Quantizer.load(path)
    assert (q2.spec, q2.dim, q2.seed, q2.code_size) == (q.spec, q.dim, q.seed, q.code_size)
    x = gaussian(64, seed=3)
    np.testing.assert_array_equal(q.encode(x), q2.encode(x))


def test_bad_spec_raises_kvq_error_with_sentence():
    with pytest.raises(kvq.KvqError) as e:
        kvq.Quantizer("no_such_method:bits=3", DIM)
    assert e.value.name == "PARSE" and e.value.status == 7
    assert e.value.sentence in str(e.value)
    assert e.value.sentence == "config string could not be parsed"


def test_load_errors_are_kvq_errors(tmp_path):
    with pytest.raises(kvq.KvqError) as e:
        kvq.Quantizer.load(str(tmp_path / "missing.safetensors"))
    assert e.value.name == "IO"
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(kvq.KvqError) as e:
        kvq.Quantizer.load(str(junk))
    assert e.value.name == "FORMAT"


def test_shapes_and_dtypes_are_validated():
    q = kvq.Quantizer("q8_0", DIM)
    with pytest.raises(ValueError):
        q.encode(np.zeros((3, DIM + 1), np.float32))
    with pytest.raises(ValueError):
        q.encode(np.zeros((2, 3, DIM), np.float32))
    codes = q.encode(gaussian(3))
    with pytest.raises(ValueError):
        q.decode(codes.astype(np.int32))
    with pytest.raises(ValueError):
        q.decode(codes[:, :-1])
    with pytest.raises(ValueError):
        q.score(np.zeros((2, DIM), np.float32), codes)
    with pytest.raises(ValueError):
        kvq.Quantizer("q8_0", 0)
    # float64 and non-contiguous inputs are converted, not rejected
    x64 = gaussian(6).astype(np.float64)[::2]
    np.testing.assert_array_equal(q.encode(x64), q.encode(x64.astype(np.float32)))


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
    np.testing.assert_allclose(out, ref, atol=2e-4)


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


def test_index_finds_exact_neighbours_and_round_trips(tmp_path):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    q = rng.standard_normal((20, 32)).astype(np.float32)
    index = kvq.Index(32, metric="l2", nlist=16, bits=4, seed=3)
    index.train(x)
    index.add(x, ids=np.arange(3000, dtype=np.int64) + 1000)
    assert len(index) == 3000 and index.size_bytes > 3000 * 32 // 8
    ids, dists = index.search(q, 10, nprobe=16)
    assert ids.shape == (20, 10) and dists.shape == (20, 10)
    truth = np.argsort(((q[:, None, :] - x[None, :, :]) ** 2).sum(-1), axis=1)[:, :10] + 1000
    recall = np.mean([len(set(ids[i]) & set(truth[i])) / 10 for i in range(20)])
    assert recall >= 0.9, recall
    assert np.all(np.diff(dists, axis=1) >= 0)
    # with the exact reorder store, reported distances are the true squared distances
    d_true = ((q[0] - x[ids[0] - 1000]) ** 2).sum(-1)
    np.testing.assert_allclose(dists[0], d_true, rtol=1e-4, atol=1e-3)
    one_ids, _ = index.search(q[0], 10, nprobe=16)
    np.testing.assert_array_equal(one_ids, ids[0])
    path = str(tmp_path / "x.kvqi")
    index.save(path)
    again = kvq.Index.load(path)
    assert len(again) == 3000 and again.dim == 32
    ids2, dists2 = again.search(q, 10, nprobe=16)
    np.testing.assert_array_equal(ids2, ids)
    np.testing.assert_array_equal(dists2, dists)
    pool = kvq.ThreadPool(2)
    ids3, _ = index.search(q, 10, nprobe=16, pool=pool)
    np.testing.assert_array_equal(ids3, ids)


def test_index_errors():
    with pytest.raises(ValueError):
        kvq.Index(16, metric="manhattan")
    index = kvq.Index(16)
    with pytest.raises(ValueError):
        index.add(np.zeros((4, 15), np.float32))
    with pytest.raises(ValueError):
        index.add(np.zeros((4, 16), np.float32), ids=np.arange(3))
    with pytest.raises(kvq.KvqError):
        kvq.Index(16, bits=9)
