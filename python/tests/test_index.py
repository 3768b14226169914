# test_index.py - kvq.Index: recall against brute force, save/load, errors, and
# searches from many threads while another thread adds.
import os
import threading

import numpy as np
import pytest

import kvq

DIM = 64


def gaussian(n, dim=DIM, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


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


def test_threads_search_while_one_adds():
    rng = np.random.default_rng(21)
    x = rng.standard_normal((4000, 32)).astype(np.float32)
    q = rng.standard_normal((16, 32)).astype(np.float32)
    index = kvq.Index(32, metric="l2", nlist=8, bits=4, seed=2)
    index.train(x)
    index.add(x[:2000])
    serial_ids, serial_d = index.search(q, 10, nprobe=8)
    errors = []
    found = []

    def searcher():
        try:
            for _ in range(10):
                ids, d = index.search(q, 10, nprobe=8)
                assert np.all(ids >= 0) and np.all(np.diff(d, axis=1) >= 0)
                found.append((ids, d))
        except Exception as e:
            errors.append(e)

    def adder():
        try:
            for i in range(2000, 4000, 250):
                index.add(x[i : i + 250])
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=searcher) for _ in range(6)]
    threads.append(threading.Thread(target=adder))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(found) == 60
    assert len(index) == 4000
    # each search saw the index between two adds: its results are those of some prefix
    # of the data, and once the adds are done every thread gets the serial answer
    final_ids, final_d = index.search(q, 10, nprobe=8)
    truth = kvq.Index(32, metric="l2", nlist=8, bits=4, seed=2)
    truth.train(x)
    truth.add(x)
    np.testing.assert_array_equal(final_ids, truth.search(q, 10, nprobe=8)[0])
    for ids, d in found:
        assert np.all(d[:, 0] <= serial_d[:, 0] + 1e-4)
