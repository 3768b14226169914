"""quickstart.py - the kvq package in one screen: a quantizer, one layer's compressed KV
cache with attention, and a vector index. Run: python quickstart.py"""

import numpy as np

import kvq

rng = np.random.default_rng(0)
print("kvq", kvq.version(), "on", kvq.cpu_isa(), "from", kvq.library_path)

# A quantizer: 1-bit TurboQuant RVQ with two residual passes, 128-dim vectors.
q = kvq.Quantizer("turboquant_rvq:bits=1,residuals=2", dim=128, seed=7)
x = rng.standard_normal((1000, 128), dtype=np.float32)
codes = q.encode(x)
x_hat = q.decode(codes)
cos = np.sum(x * x_hat, 1) / np.linalg.norm(x, axis=1) / np.linalg.norm(x_hat, axis=1)
print("quantizer %s: %d bytes a vector (fp32: 512), mean cosine %.3f" % (q.spec, q.code_size, cos.mean()))

# One layer's KV cache: 8 KV heads of 128, keys 1+1 bits, values 2 bits, 32 exact
# recent tokens; attention is computed from the codes.
cache = kvq.Cache(8, 128, key_spec="turboquant_rvq:bits=1,residuals=2", value_spec="mse:bits=2", window=32)
k = rng.standard_normal((512, 8, 128), dtype=np.float32)
v = rng.standard_normal((512, 8, 128), dtype=np.float32)
cache.append(k, v)
out = cache.attend(rng.standard_normal((1, 32, 128), dtype=np.float32))
mem = cache.memory()
print("cache: %d tokens in %d bytes (fp16 would be %d); attention out %s"
      % (len(cache), mem["total"], 512 * 8 * 128 * 2 * 2, out.shape))
if kvq.presets():
    print("cache presets:", ", ".join(kvq.presets()))

# A RaBitQ IVF index: 4-bit codes, exact rerank.
index = kvq.Index(64, metric="l2", nlist=16, bits=4, seed=1)
base = rng.standard_normal((5000, 64), dtype=np.float32)
index.train(base)
index.add(base)
ids, dists = index.search(base[:5], k=3, nprobe=8)
assert (ids[:, 0] == np.arange(5)).all(), ids
print("index: %d vectors in %d bytes; each query finds itself first" % (len(index), index.size_bytes))
