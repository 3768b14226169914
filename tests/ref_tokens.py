#!/usr/bin/env python3
"""ref_tokens.py - reference token ids of a text under a GGUF vocabulary: byte-level BPE
("gpt2") from the Hugging Face `tokenizers` package (the model's vocabulary and merges, the
smollm pre-tokenizer: digits one by one, then GPT-2's byte-level regex); SentencePiece
("llama", e.g. Gemma 3) from the `sentencepiece` package running a model proto built from
the GGUF's pieces, scores and types (BPE, byte fallback, identity normalization, the
file's add_space_prefix; needs `protobuf` too).

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


def spm_ids(r, text):
    from sentencepiece import SentencePieceProcessor
    from sentencepiece import sentencepiece_model_pb2 as pb

    toks = strings(r, "tokenizer.ggml.tokens")
    scores = list(r.fields["tokenizer.ggml.scores"].contents())
    types = list(r.fields["tokenizer.ggml.token_type"].contents())
    prefix = r.fields.get("tokenizer.ggml.add_space_prefix")
    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.vocab_size = len(toks)
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = bool(prefix.contents()) if prefix is not None else True
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    for t, sc, ty in zip(toks, scores, types):
        p = m.pieces.add()
        p.piece, p.score, p.type = t, float(sc), int(ty)
    sp = SentencePieceProcessor(model_proto=m.SerializeToString())
    return sp.encode(text)


def main():
    r = gguf.GGUFReader(sys.argv[1])
    if bytes(r.fields["tokenizer.ggml.model"].parts[-1]).decode() == "llama":
        report(spm_ids(r, open(sys.argv[2], encoding="utf-8").read()))
        return
    toks = strings(r, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in strings(r, "tokenizer.ggml.merges")]
    types = list(r.fields["tokenizer.ggml.token_type"].contents())
    tk = Tokenizer(models.BPE({t: i for i, t in enumerate(toks)}, merges))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(toks, types) if ty == 3])
    report(tk.encode(open(sys.argv[2], encoding="utf-8").read()).ids)


def report(ids):
    h = 0xCBF29CE484222325
    for b in struct.pack(f"<{len(ids)}i", *ids):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    print(len(ids), f"{h:016x}")
    print(" ".join(str(i) for i in ids[:32]))


if __name__ == "__main__":
    main()
