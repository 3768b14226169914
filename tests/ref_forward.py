#!/usr/bin/env python3
"""ref_forward.py - numpy reference of the Llama forward pass on GGUF weights.

Reads the file with the `gguf` package (its own dequantizers, not kvq's), runs the
model in float64 (RMSNorm, RoPE with normal or NeoX pairing, grouped-query causal
attention, SwiGLU, tied or separate output; for gemma3: embeddings scaled by sqrt(n_embd),
RMS-normed queries and keys, sliding-window layers (llama.cpp's default pattern: every
sixth layer global) with RoPE base 10000, attention scale 1/sqrt(head_dim), norms after
attention and feed-forward, GeGLU with tanh GELU, logit soft-capping) and writes the
logits of every position:

    python3 tests/ref_forward.py MODEL.gguf OUT.ref TOKEN [TOKEN ...]

OUT.ref: b"KVQREF1\\0", u32 n_tokens, u32 n_vocab, i32 tokens[n], f32 logits[n][n_vocab].
"""
import struct
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def load(path):
    r = GGUFReader(path)
    arch = field(r, "general.architecture")
    hp = {
        "arch": arch,
        "n_layers": field(r, f"{arch}.block_count"),
        "n_embd": field(r, f"{arch}.embedding_length"),
        "n_heads": field(r, f"{arch}.attention.head_count"),
        "n_kv_heads": field(r, f"{arch}.attention.head_count_kv"),
        "rope_base": field(r, f"{arch}.rope.freq_base", 10000.0),
        "eps": field(r, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5),
    }
    hp["head_dim"] = field(r, f"{arch}.attention.key_length", hp["n_embd"] // hp["n_heads"])
    hp["n_rot"] = field(r, f"{arch}.rope.dimension_count", hp["head_dim"])
    hp["gemma"] = arch == "gemma3"
    hp["neox"] = arch == "qwen2" or hp["gemma"]
    hp["n_swa"] = field(r, f"{arch}.attention.sliding_window", 0) if hp["gemma"] else 0
    hp["rope_base_swa"] = field(r, f"{arch}.rope.freq_base_swa", 10000.0)
    hp["softcap"] = field(r, f"{arch}.final_logit_softcapping", 0.0)
    w = {}
    for t in r.tensors:
        ne = [int(x) for x in t.shape]  # ne0 first
        data = dequantize(np.asarray(t.data), t.tensor_type).astype(np.float64)
        w[t.name] = data.reshape(list(reversed(ne)) if len(ne) > 1 else ne)
    return hp, w


def rmsnorm(x, g, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def rope(x, pos, hp, base):
    """x: [n_heads][head_dim] at position pos."""
    half = hp["n_rot"] // 2
    freq = base ** (-2.0 * np.arange(half) / hp["n_rot"])
    theta = pos * freq
    c, s = np.cos(theta), np.sin(theta)
    x = x.copy()
    if hp["neox"]:
        a, b = np.arange(half), np.arange(half) + half
    else:
        a, b = 2 * np.arange(half), 2 * np.arange(half) + 1
    x0, x1 = x[:, a].copy(), x[:, b].copy()
    x[:, a] = x0 * c - x1 * s
    x[:, b] = x0 * s + x1 * c
    return x


def forward(hp, w, tokens):
    n = len(tokens)
    H, KV, hd, E = hp["n_heads"], hp["n_kv_heads"], hp["head_dim"], hp["n_embd"]
    gemma = hp["gemma"]
    x = w["token_embd.weight"][tokens]  # [n][E]
    if gemma:
        x = x * np.sqrt(E)
    pos = np.arange(n)
    for l in range(hp["n_layers"]):
        p = f"blk.{l}."
        swa = hp["n_swa"] > 0 and l % 6 < 5
        base = hp["rope_base_swa"] if swa else hp["rope_base"]
        xn = rmsnorm(x, w[p + "attn_norm.weight"], hp["eps"])
        q = xn @ w[p + "attn_q.weight"].T
        k = xn @ w[p + "attn_k.weight"].T
        v = xn @ w[p + "attn_v.weight"].T
        for name, y in (("attn_q.bias", q), ("attn_k.bias", k), ("attn_v.bias", v)):
            if p + name in w:
                y += w[p + name]
        q, k = q.reshape(n, H, hd), k.reshape(n, KV, hd)
        if gemma:
            q = rmsnorm(q, w[p + "attn_q_norm.weight"], hp["eps"])
            k = rmsnorm(k, w[p + "attn_k_norm.weight"], hp["eps"])
        q = np.stack([rope(q[t], t, hp, base) for t in range(n)])
        k = np.stack([rope(k[t], t, hp, base) for t in range(n)])
        v = v.reshape(n, KV, hd)
        att = np.zeros((n, H, hd))
        group = H // KV
        visible = pos[None, :] <= pos[:, None]  # [query][key]
        if swa:
            visible &= pos[:, None] - pos[None, :] < hp["n_swa"]
        for h in range(H):
            kh, vh = k[:, h // group], v[:, h // group]
            s = q[:, h] @ kh.T / np.sqrt(hd)  # [n][n]
            s = np.where(visible, s, -np.inf)
            s = np.exp(s - s.max(axis=1, keepdims=True))
            s /= s.sum(axis=1, keepdims=True)
            att[:, h] = s @ vh
        y = att.reshape(n, H * hd) @ w[p + "attn_output.weight"].T
        if gemma:
            y = rmsnorm(y, w[p + "post_attention_norm.weight"], hp["eps"])
        x = x + y
        xn = rmsnorm(x, w[p + "ffn_norm.weight"], hp["eps"])
        g = xn @ w[p + "ffn_gate.weight"].T
        u = xn @ w[p + "ffn_up.weight"].T
        if gemma:
            act = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
        else:
            act = g / (1 + np.exp(-g))
        y = (act * u) @ w[p + "ffn_down.weight"].T
        if gemma:
            y = rmsnorm(y, w[p + "post_ffw_norm.weight"], hp["eps"])
        x = x + y
    out = w.get("output.weight", w["token_embd.weight"])
    logits = rmsnorm(x, w["output_norm.weight"], hp["eps"]) @ out.T
    if hp["softcap"]:
        logits = hp["softcap"] * np.tanh(logits / hp["softcap"])
    return logits


def write_ref(path, tokens, logits):
    with open(path, "wb") as f:
        f.write(b"KVQREF1\0")
        f.write(struct.pack("<II", len(tokens), logits.shape[1]))
        f.write(np.asarray(tokens, dtype="<i4").tobytes())
        f.write(np.asarray(logits, dtype="<f4").tobytes())


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    hp, w = load(sys.argv[1])
    tokens = [int(t) for t in sys.argv[3:]]
    write_ref(sys.argv[2], tokens, forward(hp, w, tokens))


if __name__ == "__main__":
    main()
