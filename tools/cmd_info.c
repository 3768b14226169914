/* cmd_info.c - `kvq info MODEL.gguf`: what a GGUF file holds (shape, tokenizer,
 * tensor types, metadata), read through the public engine API. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

static int info_usage(FILE *f) {
    fprintf(f,
            "usage: kvq info [--tensors] [--metadata] MODEL.gguf   (or -m MODEL.gguf)\n\n"
            "Prints the model's shape, tokenizer, KV cache size per token and tensor type counts.\n"
            "  --tensors    also list every tensor (name, type, dims)\n"
            "  --metadata   also print every metadata key and value\n");
    return f == stderr ? 1 : 0;
}

int kvq_cmd_info(int argc, char **argv) {
    const char *path = NULL;
    int tensors = 0, metadata = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return info_usage(stdout);
        else if (!strcmp(argv[i], "--tensors")) tensors = 1;
        else if (!strcmp(argv[i], "--metadata")) metadata = 1;
        else if ((!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) && i + 1 < argc && !path) path = argv[++i];
        else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "kvq info: unknown option %s\n", argv[i]);
            return info_usage(stderr);
        } else if (!path) path = argv[i];
        else return info_usage(stderr);
    }
    if (!path) return info_usage(stderr);
    kvq_model *model;
    char msg[256] = "";
    kvq_status st = kvq_model_load(path, &model, msg, sizeof msg);
    if (st) {
        fprintf(stderr, "kvq info: %s: %s%s%s\n", path, kvq_strerror(st), msg[0] ? ": " : "", msg);
        return 1;
    }
    kvq_model_info in;
    kvq_model_get_info(model, &in);
    printf("file          %s (GGUF v%u, %" PRIu64 " tensors, %" PRIu64 " metadata keys)\n", path,
           in.gguf_version, in.n_tensors, in.n_metadata);
    printf("name          %s\n", in.name[0] ? in.name : "-");
    printf("architecture  %s\n", in.arch);
    printf("layers        %u\n", in.n_layers);
    printf("embedding     %u\n", in.n_embd);
    printf("feed-forward  %u\n", in.n_ff);
    printf("heads         %u query, %u key/value (head_dim %u)\n", in.n_heads, in.n_kv_heads, in.head_dim);
    printf("context       %u\n", in.ctx_len);
    printf("rope          base %g, %s pairing, linear scale %g\n", in.rope_base,
           in.rope_neox ? "neox" : "normal", in.rope_scale);
    printf("rms eps       %g\n", in.norm_eps);
    printf("output        %s\n", in.tied_output ? "tied to the token embedding" : "separate");
    printf("tokenizer     %s (pre: %s), %u tokens, bos %d, eos %d, add_bos %d\n", in.tokenizer,
           in.pre_tokenizer[0] ? in.pre_tokenizer : "-", in.n_vocab, in.bos_token, in.eos_token, in.add_bos);
    printf("parameters    %" PRIu64 " (%.1f MiB of tensor data)\n", in.n_params,
           (double)in.weight_bytes / (1024.0 * 1024.0));
    uint64_t kv_fp16 = 2ull * in.n_layers * in.n_kv_heads * in.head_dim * 2;
    printf("kv per token  %" PRIu64 " bytes as fp16 (%.1f MiB for %u tokens)\n", kv_fp16,
           (double)kv_fp16 * in.ctx_len / (1024.0 * 1024.0), in.ctx_len);
    printf("tensor types ");
    for (uint32_t t = 0; t < KVQ_MODEL_TYPE_SLOTS; t++)
        if (in.type_count[t]) {
            const char *name = kvq_tensor_type_name(t);
            printf(" %s:%u", name ? name : "?", in.type_count[t]);
        }
    printf("\n");
    if (metadata) {
        printf("\nmetadata:\n");
        for (uint64_t i = 0; i < in.n_metadata; i++) {
            char key[128], value[512];
            if (kvq_model_metadata(model, i, key, sizeof key, value, sizeof value) == KVQ_OK)
                printf("  %-44s %s\n", key, value);
        }
    }
    if (tensors) {
        printf("\ntensors:\n");
        for (uint64_t i = 0; i < in.n_tensors; i++) {
            char name[128];
            uint32_t type, nd;
            uint64_t dims[4];
            if (kvq_model_tensor(model, i, name, sizeof name, &type, dims, &nd) != KVQ_OK) continue;
            const char *tn = kvq_tensor_type_name(type);
            printf("  %-36s %-6s", name, tn ? tn : "?");
            for (uint32_t d = 0; d < nd; d++) printf("%s%" PRIu64, d ? " x " : " ", dims[d]);
            printf("\n");
        }
    }
    kvq_model_free(model);
    return 0;
}
