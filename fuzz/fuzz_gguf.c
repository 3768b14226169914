/* fuzz_gguf.c - libFuzzer target for the GGUF loader: header, metadata, tensor infos,
 * then the model and tokenizer built on them, then a short text through the tokenizer
 * and two messages through the file's chat template.
 * Build (from the repository root):
 *   make BUILD=build-fuzz CC=clang SAN=1 NO_CUDA=1 lib
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Isrc fuzz/fuzz_gguf.c \
 *     build-fuzz/libkvq.a -lm -pthread -o build-fuzz/fuzz_gguf
 *   build-fuzz/fuzz_gguf fuzz/corpus/gguf -max_total_time=60
 */
#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kvqi_gguf *g = NULL;
    char msg[256];
    if (kvqi_gguf_open_mem(data, size, &g, msg, sizeof msg) != KVQ_OK) return 0;
    /* every metadata value must print without reading outside the buffer */
    for (uint64_t i = 0; i < g->n_kv; i++) kvqi_gguf_format_value(&g->kv[i], msg, sizeof msg);
    kvq_model *m = NULL;
    if (kvqi_model_from_gguf(g, &m, msg, sizeof msg) != KVQ_OK) return 0; /* g is closed */
    int32_t tokens[64];
    size_t n = 0;
    kvq_tokenize(m, "Hello world 123 <|im_start|>", 1, tokens, 64, &n);
    char piece[64];
    size_t len;
    for (size_t i = 0; i < n && i < 64; i++) kvq_token_to_piece(m, tokens[i], piece, sizeof piece, &len);
    /* the chat template (or the vocabulary's turn tokens) read from the file */
    kvq_chat_message msgs[2] = {{"system", "s"}, {"user", "u"}};
    char text[256];
    kvq_chat_format(m, NULL, msgs, 2, 1, text, sizeof text, &len, msg, sizeof msg);
    kvq_model_free(m);
    return 0;
}
