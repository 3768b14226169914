# test_quantizer.py - kvq.Quantizer against the library: round-trips, determinism,
# save/load, errors surfacing as KvqError with the library's sentence, shapes, dtypes
# (float16, bfloat16 and torch tensors) and threads sharing one quantizer.
import os
import threading

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


def test_leading_dims_and_half_precision_inputs():
    q = kvq.Quantizer("mse:bits=3", DIM, seed=5)
    x = gaussian(24, seed=4)
    flat = q.encode(x)
    # any leading shape: [batch, heads, seq, dim] gives [batch, heads, seq, code_size]
    codes = q.encode(x.reshape(2, 3, 4, DIM))
    assert codes.shape == (2, 3, 4, q.code_size)
    np.testing.assert_array_equal(codes.reshape(24, -1), flat)
    assert q.decode(codes).shape == (2, 3, 4, DIM)
    np.testing.assert_array_equal(q.decode(codes).reshape(24, DIM), q.decode(flat))
    # float16 input is read as the float32 it converts to
    h = x.astype(np.float16)
    np.testing.assert_array_equal(q.encode(h), q.encode(h.astype(np.float32)))


def test_torch_tensors_of_every_float_dtype():
    torch = pytest.importorskip("torch")
    q = kvq.Quantizer("q8_0", DIM)
    x = torch.randn(2, 3, 5, DIM, generator=torch.Generator().manual_seed(1))
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        t = x.to(dtype)
        codes = q.encode(t)
        assert codes.shape == (2, 3, 5, q.code_size)
        np.testing.assert_array_equal(codes, q.encode(t.float().numpy()))


def test_threads_sharing_a_quantizer_give_the_serial_codes():
    q = kvq.Quantizer("turboquant_rvq:bits=2,residuals=2", DIM, seed=9)
    xs = [gaussian(300, seed=100 + i) for i in range(16)]
    serial = [q.encode(x) for x in xs]
    results = [None] * len(xs)
    errors = []

    def work(i):
        try:
            for _ in range(5):
                c = q.encode(xs[i])
                d = q.decode(c)
                results[i] = (c, d)
        except Exception as e:  # reported below, on the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, (c, d) in enumerate(results):
        np.testing.assert_array_equal(c, serial[i])
        np.testing.assert_array_equal(d, q.decode(serial[i]))
