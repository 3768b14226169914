# The index's editing and query features from Python: remove, filtered search, range
# search, memory-mapped load, threaded build, bad input; each checked against brute force.
import numpy as np
import pytest

import kvq


def _data(n=2000, d=24, seed=5):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((8, d)) * 3
    x = (c[rng.integers(0, 8, n)] + rng.standard_normal((n, d))).astype(np.float32)
    q = (c[rng.integers(0, 8, 10)] + rng.standard_normal((10, d))).astype(np.float32)
    return x, q


def _brute(x, q, k, keep=None):
    d = ((q[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    if keep is not None:
        d[:, ~keep] = np.inf
    return np.argsort(d, axis=1, kind="stable")[:, :k], d


def _built(x, **kw):
    index = kvq.Index(x.shape[1], nlist=6, **kw)
    index.train(x)
    index.add(x)
    return index


def test_remove_then_search_is_brute_force_over_the_rest(tmp_path):
    x, q = _data()
    index = _built(x, bits=3)
    gone = np.arange(0, 2000, 3)
    assert index.remove(np.concatenate([gone, [99999]])) == len(gone)
    assert len(index) == 2000 - len(gone)
    keep = np.ones(2000, bool)
    keep[gone] = False
    ids, _ = index.search(q, 10, nprobe=6, eps0=float("inf"))
    want, _ = _brute(x, q, 10, keep)
    np.testing.assert_array_equal(ids, want)
    index.add(x[:1])  # new ids never reuse a removed one
    ids1, _ = index.search(x[0], 1, nprobe=6, eps0=float("inf"))
    assert ids1[0] == 2000


def test_filtered_search_by_ids_and_by_callable():
    x, q = _data()
    index = _built(x, bits=2)
    allowed = np.arange(1, 2000, 2)
    keep = np.zeros(2000, bool)
    keep[allowed] = True
    want, _ = _brute(x, q, 10, keep)
    ids, _ = index.search(q, 10, nprobe=6, eps0=float("inf"), allow=allowed)
    np.testing.assert_array_equal(ids, want)
    ids2, _ = index.search(q, 10, nprobe=6, eps0=float("inf"), allow=lambda i: i % 2 == 1)
    np.testing.assert_array_equal(ids2, want)
    ids3, _ = index.search(q, 10, nprobe=3, allow=allowed)
    assert np.all(ids3[ids3 >= 0] % 2 == 1)


def test_range_search_is_every_vector_within():
    x, q = _data()
    index = _built(x)
    _, d = _brute(x, q, 10)
    for i in range(3):
        radius = float(np.sort(d[i])[40])
        ids, dists = index.range_search(q[i], radius, nprobe=6, eps0=float("inf"))
        want = set(np.nonzero(d[i] <= radius * (1 - 1e-5))[0])
        got = set(ids.tolist())
        assert want <= got and len(got) <= 42
        assert np.all(np.diff(dists) >= 0)
        ids_odd, _ = index.range_search(q[i], radius, nprobe=6, eps0=float("inf"),
                                        allow=lambda j: j % 2 == 1)
        assert set(ids_odd.tolist()) == {j for j in got if j % 2 == 1}


def test_mapped_index_answers_as_loaded(tmp_path):
    x, q = _data()
    index = _built(x, bits=4)
    path = str(tmp_path / "m.kvqi")
    index.save(path)
    loaded, mapped = kvq.Index.load(path), kvq.Index.map(path)
    a = loaded.search(q, 10, nprobe=3)
    b = mapped.search(q, 10, nprobe=3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(kvq.KvqError):
        mapped.add(x[:1])
    with pytest.raises(kvq.KvqError):
        mapped.remove([1])


def test_threaded_build_is_identical_and_codes_are_packed(tmp_path):
    x, q = _data()
    pool = kvq.ThreadPool(2)
    a = kvq.Index(24, nlist=6, bits=3)
    a.train(x)
    a.add(x)
    b = kvq.Index(24, nlist=6, bits=3)
    b.train(x, pool=pool)
    b.add(x, pool=pool)
    pa, pb = str(tmp_path / "a.kvqi"), str(tmp_path / "b.kvqi")
    a.save(pa)
    b.save(pb)
    assert open(pa, "rb").read() == open(pb, "rb").read()
    # 1-bit code 4 bytes, 3-bit code 12, factors 4 * 4 + 2 * 4, row number 4 (d 24 -> 32)
    assert a.code_bytes == 32 // 8 + 32 * 3 // 8 + 24 + 4


def test_bad_input_is_refused():
    x, q = _data()
    index = _built(x)
    with pytest.raises(kvq.KvqError):
        index.add(x[:2], ids=np.array([5, -1]))
    bad = q.copy()
    bad[0, 0] = np.nan
    with pytest.raises(kvq.KvqError):
        index.search(bad, 5)
    cos = kvq.Index(24, metric="cosine")
    cos.train(x)
    with pytest.raises(kvq.KvqError):
        cos.add(np.zeros((1, 24), np.float32))
    with pytest.raises(kvq.KvqError):
        kvq.Index(24, nlist=50).train(x[:10])
