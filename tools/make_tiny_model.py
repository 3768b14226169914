#!/usr/bin/env python3
"""make_tiny_model.py - a tiny random-weight Llama GGUF for the engine's tests.

2 layers, n_embd 256, 4 query heads, 2 KV heads (head_dim 64), n_ff 256, a byte-level
BPE vocabulary learned from a short text (smollm pre-tokenizer: digits split one by one),
and every weight type the engine reads: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
Q4_K, Q5_K, Q6_K (K-quant blocks are written directly as random fields, since the
`gguf` package cannot quantize them). Deterministic for a seed.

    python3 tools/make_tiny_model.py tests/data

writes tiny-llama.gguf, tiny-llama.ref (numpy reference logits of 16 tokens, see
tests/ref_forward.py) and tiny-llama.tok (reference token ids from the `tokenizers`
package, when it is installed).

    python3 tools/make_tiny_model.py --gemma tests/data

writes only tiny-gemma.gguf and tiny-gemma.ref: a six-layer gemma3 model (five
sliding-window layers of window 5, then a global one; head_dim 64 over n_embd 96; QK-norm,
post-norms, GeGLU, logit soft-capping, a Gemma chat template and its turn tokens).

    python3 tools/make_tiny_model.py --fuzz-seeds fuzz/corpus/gguf

writes the small seed files of the GGUF fuzz target.
"""
import os
import re
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf import quants

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import ref_forward  # noqa: E402

CORPUS = """The quick brown fox jumps over the lazy dog. A cache of keys and values
grows with every token the model reads; compressing it lets longer texts fit. In 2024
the method stored 3 bits per number, then 2, then 1. Don't stop: they're here, we'll see,
it's fine, I'm sure you've heard. Numbers like 12345 and 678 split into digits.
Words, words, words: the the the and and of of to to in in is is that that it it."""

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
N_MERGES = 120


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def train_bpe(text, n_merges):
    b2u = bytes_to_unicode()
    pieces = re.findall(r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+|[0-9]", text)
    words = {}
    for p in pieces:
        key = tuple(b2u[b] for b in p.encode("utf-8"))
        words[key] = words.get(key, 0) + 1
    merges = []
    for _ in range(n_merges):
        counts = {}
        for wd, c in words.items():
            for a, b in zip(wd, wd[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + c
        if not counts:
            break
        best = max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        new = {}
        for wd, c in words.items():
            out, i = [], 0
            while i < len(wd):
                if i + 1 < len(wd) and (wd[i], wd[i + 1]) == best:
                    out.append(wd[i] + wd[i + 1])
                    i += 2
                else:
                    out.append(wd[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + c
        words = new
    vocab = SPECIALS + [b2u[b] for b in range(256)]
    seen = set(vocab)
    for a, b in merges:
        if a + b not in seen:
            vocab.append(a + b)
            seen.add(a + b)
    return vocab, merges


def k_blocks(rng, rows, cols, qtype, sigma):
    """Random but valid K-quant blocks whose values have roughly std sigma."""
    nb = rows * cols // 256
    f16 = lambda v: np.full((nb, 1), v, dtype=np.float16).view(np.uint8).reshape(nb, 2)
    if qtype == T.Q6_K:
        ql = rng.integers(0, 256, (nb, 128), dtype=np.uint8)
        qh = rng.integers(0, 256, (nb, 64), dtype=np.uint8)
        sc = rng.integers(-40, 41, (nb, 16), dtype=np.int8).view(np.uint8)
        blk = np.concatenate([ql, qh, sc, f16(sigma / (18 * 24))], axis=1)
    elif qtype in (T.Q4_K, T.Q5_K):
        scales = rng.integers(0, 256, (nb, 12), dtype=np.uint8)
        parts = [f16(sigma / 120), f16(sigma / 60), scales]
        if qtype == T.Q5_K:
            parts.append(rng.integers(0, 256, (nb, 32), dtype=np.uint8))
        parts.append(rng.integers(0, 256, (nb, 128), dtype=np.uint8))
        blk = np.concatenate(parts, axis=1)
    else:
        raise ValueError(qtype)
    return blk.reshape(rows, -1)


def weight(rng, rows, cols, qtype):
    """(array for GGUFWriter.add_tensor, raw_dtype) for a rows x cols matrix."""
    sigma = 1.0 / np.sqrt(cols)
    if qtype in (T.Q4_K, T.Q5_K, T.Q6_K):
        return k_blocks(rng, rows, cols, qtype, sigma), qtype
    x = (rng.standard_normal((rows, cols)) * sigma).astype(np.float32)
    if qtype == T.F32:
        return x, None
    if qtype == T.F16:
        return x.astype(np.float16), None
    return quants.quantize(x, qtype), qtype


def make(out_dir, seed=1234):
    rng = np.random.default_rng(seed)
    n_layers, E, H, KV, F = 2, 256, 4, 2, 256
    hd = E // H
    vocab, merges = train_bpe(CORPUS, N_MERGES)
    V = len(vocab)
    path = os.path.join(out_dir, "tiny-llama.gguf")
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_name("kvq tiny test llama")
    w.add_block_count(n_layers)
    w.add_context_length(256)
    w.add_embedding_length(E)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(V)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(vocab)
    types = [3 if t in SPECIALS else 1 for t in vocab]
    w.add_token_types(types)
    w.add_token_merges([f"{a} {b}" for a, b in merges])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)

    def add(name, rows, cols, qtype):
        arr, raw = weight(rng, rows, cols, qtype)
        if raw is None:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, arr, raw_dtype=raw)

    def norm(name):
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(E)).astype(np.float32))

    add("token_embd.weight", V, E, T.Q8_0)
    layer_types = [
        dict(q=T.Q4_K, k=T.F16, v=T.Q8_0, o=T.Q5_K, gate=T.Q4_0, up=T.Q4_1, down=T.Q5_0),
        dict(q=T.Q6_K, k=T.BF16, v=T.Q5_1, o=T.Q4_K, gate=T.Q8_0, up=T.Q4_1, down=T.Q6_K),
    ]
    for l, ty in enumerate(layer_types):
        p = f"blk.{l}."
        norm(p + "attn_norm.weight")
        add(p + "attn_q.weight", H * hd, E, ty["q"])
        add(p + "attn_k.weight", KV * hd, E, ty["k"])
        add(p + "attn_v.weight", KV * hd, E, ty["v"])
        add(p + "attn_output.weight", E, H * hd, ty["o"])
        norm(p + "ffn_norm.weight")
        add(p + "ffn_gate.weight", F, E, ty["gate"])
        add(p + "ffn_up.weight", F, E, ty["up"])
        add(p + "ffn_down.weight", E, F, ty["down"])
    norm("output_norm.weight")
    add("output.weight", V, E, T.Q6_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # reference logits for 16 tokens spread over the vocabulary
    tokens = [int(t) for t in rng.integers(0, V, 16)]
    hp, weights = ref_forward.load(path)
    ref_forward.write_ref(os.path.join(out_dir, "tiny-llama.ref"), tokens, ref_forward.forward(hp, weights, tokens))
    write_token_refs(os.path.join(out_dir, "tiny-llama.tok"), vocab, merges)
    make_spm(out_dir)
    make_llama3(out_dir, vocab, merges)
    make_gemma(out_dir)


GEMMA_TURNS = ["<start_of_turn>", "<end_of_turn>"]
GEMMA_TEMPLATE = ("{{ bos_token }}{%- for message in messages -%}{{ '<start_of_turn>' + role + '\\n' }}"
                  "{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}{%- endfor -%}"
                  "{%- if add_generation_prompt -%}{{'<start_of_turn>model\\n'}}{%- endif -%}")


def make_gemma(out_dir, seed=4321):
    """A tiny gemma3: the BPE vocabulary above plus Gemma's turn tokens, six layers so that
    llama.cpp's default pattern (every sixth layer global) applies, a window of 5 so the
    16 reference tokens cross it."""
    rng = np.random.default_rng(seed)
    n_layers, E, H, KV, hd, F = 6, 96, 2, 1, 64, 256
    vocab, merges = train_bpe(CORPUS, N_MERGES)
    vocab = vocab + GEMMA_TURNS
    V = len(vocab)
    path = os.path.join(out_dir, "tiny-gemma.gguf")
    w = gguf.GGUFWriter(path, arch="gemma3")
    w.add_name("kvq tiny test gemma3")
    w.add_block_count(n_layers)
    w.add_context_length(256)
    w.add_embedding_length(E)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_sliding_window(5)
    w.add_float32("gemma3.final_logit_softcapping", 30.0)
    w.add_vocab_size(V)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(vocab)
    w.add_token_types([3 if t in SPECIALS or t in GEMMA_TURNS else 1 for t in vocab])
    w.add_token_merges([f"{a} {b}" for a, b in merges])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(GEMMA_TEMPLATE)

    def add(name, rows, cols, qtype):
        arr, raw = weight(rng, rows, cols, qtype)
        if raw is None:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, arr, raw_dtype=raw)

    def norm(name, n):
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    add("token_embd.weight", V, E, T.Q8_0)
    for l in range(n_layers):
        p = f"blk.{l}."
        norm(p + "attn_norm.weight", E)
        add(p + "attn_q.weight", H * hd, E, T.Q8_0 if l % 2 else T.F16)
        add(p + "attn_k.weight", KV * hd, E, T.F16)
        add(p + "attn_v.weight", KV * hd, E, T.Q8_0)
        norm(p + "attn_q_norm.weight", hd)
        norm(p + "attn_k_norm.weight", hd)
        add(p + "attn_output.weight", E, H * hd, T.Q5_0)
        norm(p + "post_attention_norm.weight", E)
        norm(p + "ffn_norm.weight", E)
        add(p + "ffn_gate.weight", F, E, T.Q8_0)
        add(p + "ffn_up.weight", F, E, T.F16)
        add(p + "ffn_down.weight", E, F, T.Q4_K if l % 2 else T.Q6_K)
        norm(p + "post_ffw_norm.weight", E)
    norm("output_norm.weight", E)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tokens = [int(t) for t in rng.integers(0, V, 16)]
    hp, weights = ref_forward.load(path)
    ref_forward.write_ref(os.path.join(out_dir, "tiny-gemma.ref"), tokens, ref_forward.forward(hp, weights, tokens))


SAMPLES = [
    "The quick brown fox jumps over the lazy dog.",
    "In 2024 the cache held 12345 keys; they're compressed to 3 bits.",
    "  leading spaces,\ttabs\nand new lines\n\n  twice  ",
    "Unicode: café, naïve, 東京, emoji 🙂 and symbols €100 ±5.",
    "<|im_start|>user\nHello there<|im_end|>",
    "don't DON'T it's we'll I'M you've",
    "a",
]


def write_token_refs(path, vocab, merges):
    """Reference ids from the Hugging Face `tokenizers` implementation of the same BPE."""
    try:
        from tokenizers import Tokenizer, models, pre_tokenizers, AddedToken
    except ImportError:
        print("tokenizers not installed: no token reference written", file=sys.stderr)
        return
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(vocab)}, list(merges)))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    with open(path, "w") as f:
        f.write("# hex of the UTF-8 text, then the token ids (tokenizers package, same vocab and merges)\n")
        for s in SAMPLES:
            ids = tok.encode(s).ids
            f.write(s.encode("utf-8").hex() + "\n")
            f.write(" ".join(str(i) for i in ids) + "\n")


def write_min_model(path, n_vocab, add_tokenizer, seed, E=32):
    """A one-layer F16 model whose only purpose is to carry a tokenizer."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(E)
    w.add_feed_forward_length(E)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    add_tokenizer(w)
    for name, shape in [("token_embd.weight", (n_vocab, E)), ("output_norm.weight", (E,)),
                        ("blk.0.attn_norm.weight", (E,)), ("blk.0.ffn_norm.weight", (E,)),
                        ("blk.0.attn_q.weight", (E, E)), ("blk.0.attn_k.weight", (E, E)),
                        ("blk.0.attn_v.weight", (E, E)), ("blk.0.attn_output.weight", (E, E)),
                        ("blk.0.ffn_gate.weight", (E, E)), ("blk.0.ffn_up.weight", (E, E)),
                        ("blk.0.ffn_down.weight", (E, E))]:
        x = (rng.standard_normal(shape) * 0.2).astype(np.float32)
        w.add_tensor(name, x.astype(np.float16) if len(shape) == 2 else x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SAMPLES = [
    "The quick brown fox jumps over the lazy dog.",
    "In 2024 the cache held 1234567 keys; THEY'RE compressed, it'S done.",
    "a.\n\nb  \n  c\r\n\td",
    "¡Hola! café «quoted» — dash, 東京 🙂🙂 x",
    "<|im_start|>user\nHello there<|im_end|>",
]


def make_llama3(out_dir, vocab, merges, seed=77):
    """The tiny BPE vocabulary under the llama3 pre-tokenizer, with reference ids from
    the `tokenizers` package running the llama3 regex."""
    try:
        from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers
    except ImportError:
        return

    def tokenizer(w):
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("llama-bpe")
        w.add_token_list(vocab)
        w.add_token_types([3 if t in SPECIALS else 1 for t in vocab])
        w.add_token_merges([f"{a} {b}" for a, b in merges])
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)

    write_min_model(os.path.join(out_dir, "tiny-llama3.gguf"), len(vocab), tokenizer, seed)
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(vocab)}, list(merges)))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    with open(os.path.join(out_dir, "tiny-llama3.tok"), "w") as f:
        f.write("# hex of the UTF-8 text, then the token ids (tokenizers package, llama3 regex)\n")
        for s in LLAMA3_SAMPLES:
            f.write(s.encode("utf-8").hex() + "\n")
            f.write(" ".join(str(i) for i in tok.encode(s).ids) + "\n")


SPM_SAMPLES = [
    "The quick brown fox jumps over the lazy dog.",
    "In 2024 the cache held 12345 keys; they're compressed to 3 bits.",
    "Unicode: café, naïve, 東京, emoji 🙂 and symbols €100 ±5.",
    "Words, words, words: the the the and and of of to to in in is is that that it it.",
    "x",
]


def make_spm(out_dir, seed=99):
    """A SentencePiece-BPE ("llama") tokenizer on a one-layer model, with reference ids
    from the `sentencepiece` package (identity normalization, as llama.cpp does none)."""
    try:
        import io
        import sentencepiece as spm
    except ImportError:
        print("sentencepiece not installed: no SentencePiece model written", file=sys.stderr)
        return
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.split("\n") * 4), model_writer=buf, vocab_size=330, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, split_digits=True, add_dummy_prefix=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, hard_vocab_limit=False,
        num_threads=1, minloglevel=2, seed_sentencepiece_size=1000)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    n = sp.get_piece_size()
    pieces = [sp.id_to_piece(i) for i in range(n)]
    scores = [float(sp.get_score(i)) for i in range(n)]
    types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1 for i in range(n)]
    def tokenizer(w):
        w.add_tokenizer_model("llama")
        w.add_token_list(pieces)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(sp.bos_id())
        w.add_eos_token_id(sp.eos_id())
        w.add_unk_token_id(sp.unk_id())

    write_min_model(os.path.join(out_dir, "tiny-spm.gguf"), n, tokenizer, seed)
    with open(os.path.join(out_dir, "tiny-spm.tok"), "w") as f:
        f.write("# hex of the UTF-8 text, then the token ids (sentencepiece package, same model)\n")
        for s in SPM_SAMPLES:
            f.write(s.encode("utf-8").hex() + "\n")
            f.write(" ".join(str(i) for i in sp.encode(s)) + "\n")


def fuzz_seeds(out_dir, seed=5):
    """Small seed files for fuzz/fuzz_gguf.c: every metadata type, and a whole minimal model."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(os.path.join(out_dir, "kv-types.gguf"), arch="llama")
    w.add_uint8("t.u8", 7)
    w.add_int8("t.i8", -7)
    w.add_uint16("t.u16", 700)
    w.add_int16("t.i16", -700)
    w.add_uint32("t.u32", 70000)
    w.add_int32("t.i32", -70000)
    w.add_float32("t.f32", 0.5)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "text")
    w.add_uint64("t.u64", 1 << 40)
    w.add_int64("t.i64", -(1 << 40))
    w.add_float64("t.f64", 0.25)
    w.add_array("t.arr_i32", [1, 2, 3])
    w.add_array("t.arr_str", ["a", "bc", ""])
    w.add_tensor("x", np.arange(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    vocab, merges = train_bpe("ab ab abc 12", 4)
    E, F = 32, 32
    w = gguf.GGUFWriter(os.path.join(out_dir, "min-llama.gguf"), arch="llama")
    w.add_block_count(1)
    w.add_context_length(16)
    w.add_embedding_length(E)
    w.add_feed_forward_length(F)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(vocab)
    w.add_token_types([3 if t in SPECIALS else 1 for t in vocab])
    w.add_token_merges([f"{a} {b}" for a, b in merges])
    V = len(vocab)
    for name, shape in [("token_embd.weight", (V, E)), ("output_norm.weight", (E,)),
                        ("blk.0.attn_norm.weight", (E,)), ("blk.0.ffn_norm.weight", (E,)),
                        ("blk.0.attn_q.weight", (E, E)), ("blk.0.attn_k.weight", (E // 2, E)),
                        ("blk.0.attn_v.weight", (E // 2, E)), ("blk.0.attn_output.weight", (E, E)),
                        ("blk.0.ffn_gate.weight", (F, E)), ("blk.0.ffn_up.weight", (F, E)),
                        ("blk.0.ffn_down.weight", (E, F))]:
        x = rng.standard_normal(shape).astype(np.float32)
        if len(shape) == 2 and name.endswith("q.weight"):
            w.add_tensor(name, quants.quantize(x, T.Q8_0), raw_dtype=T.Q8_0)
        elif len(shape) == 2:
            w.add_tensor(name, x.astype(np.float16))
        else:
            w.add_tensor(name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--fuzz-seeds":
        fuzz_seeds(sys.argv[2])
    elif len(sys.argv) > 2 and sys.argv[1] == "--gemma":
        make_gemma(sys.argv[2])
    else:
        make(sys.argv[1] if len(sys.argv) > 1 else "tests/data")
