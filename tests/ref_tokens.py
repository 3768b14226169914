#!/usr/bin/env python3
"""ref_tokens.py - reference token ids of a text under a GGUF byte-level BPE vocabulary,
from the Hugging Face `tokenizers` package (the model's vocabulary and merges, the
smollm pre-tokenizer: digits one by one, then GPT-2's byte-level regex).

    python3 tests/ref_tokens.py MODEL.gguf TEXT > REF

REF: "<count> <fnv1a-64 of the ids as little-endian int32, hex>" and the first 32 ids.
"""
import struct
import sys

import gguf
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers


def strings(reader, key):
    f = reader.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def main():
    r = gguf.GGUFReader(sys.argv[1])
    toks = strings(r, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in strings(r, "tokenizer.ggml.merges")]
    types = list(r.fields["tokenizer.ggml.token_type"].contents())
    tk = Tokenizer(models.BPE({t: i for i, t in enumerate(toks)}, merges))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(toks, types) if ty == 3])
    ids = tk.encode(open(sys.argv[2], encoding="utf-8").read()).ids
    h = 0xCBF29CE484222325
    for b in struct.pack(f"<{len(ids)}i", *ids):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    print(len(ids), f"{h:016x}")
    print(" ".join(str(i) for i in ids[:32]))


if __name__ == "__main__":
    main()
