/* test_presets.c - cache presets through the CLI: `kvq perplexity --kl` on the tiny
 * model, `kvq generate --cache-preset`, and on the real SmolLM2 model (when `make model`
 * has fetched it) the q4 preset's perplexity against its recorded bound and its greedy
 * answers to fixed chat prompts against fp16's. */
#include <stdlib.h>

#include "test.h"

#define TINY "tests/data/tiny-llama.gguf"
#define SMOLLM2 "models/SmolLM2-135M-Instruct.Q4_1.gguf"

typedef struct ppl_row {
    char name[96];
    double ppl, delta_pct, bits, kl, top1;
} ppl_row;

/* Rows of `kvq perplexity --kl` output: config ppl +- delta delta% bits seconds KL +- top1% */
static int read_ppl_rows(const char *path, ppl_row *rows, int max) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[1024];
    int n = 0;
    while (n < max && fgets(line, sizeof line, f)) {
        ppl_row r;
        double err, delta, secs, klerr;
        if (sscanf(line, "%95s %lf %lf %lf %lf%% %lf %lf %lf %lf %lf%%", r.name, &r.ppl, &err, &delta,
                   &r.delta_pct, &r.bits, &secs, &r.kl, &klerr, &r.top1) == 10)
            rows[n++] = r;
    }
    fclose(f);
    return n;
}

static const ppl_row *row_named(const ppl_row *rows, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(rows[i].name, name)) return &rows[i];
    return NULL;
}

TEST(presets_cli_perplexity_kl_and_generate) {
    char cmd[2048], path[512];
    const char *dir = kvqt_tmpdir(kvqt_);
    REQUIRE(dir);
    snprintf(path, sizeof path, "%s/text.txt", dir);
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    for (int i = 0; i < 60; i++) fprintf(f, "The quick brown fox jumps over the lazy dog %d times. ", i);
    fclose(f);
    snprintf(cmd, sizeof cmd,
             "%s perplexity -m " TINY " -f %s --ctx 256 --chunks 2 --threads 1 --kl "
             "--configs q4,fp16,q8_0,mse:bits=2+mse:bits=2@center=1,q4+vq,q4+vq@sink=1 > %s/ppl.txt 2> /dev/null",
             kvqt_cli_path(), path, dir);
    CHECK(system(cmd) == 0);
    snprintf(path, sizeof path, "%s/ppl.txt", dir);
    ppl_row rows[8];
    int n = read_ppl_rows(path, rows, 8);
    REQUIRE(n == 6);
    /* PRESET+VSPEC is read whole with or without options: vq values, not q4's (the list
     * once split it at '+' and kept the preset alone) */
    const ppl_row *pv = row_named(rows, n, "q4+vq"), *pvo = row_named(rows, n, "q4+vq@sink=1");
    REQUIRE(pv && pvo);
    CHECKF(pv->ppl == pvo->ppl && pv->kl == pvo->kl, "q4+vq %g, q4+vq@sink=1 %g", pv->ppl, pvo->ppl);
    const ppl_row *fp16 = row_named(rows, n, "fp16"), *q8 = row_named(rows, n, "q8_0");
    const ppl_row *q4 = row_named(rows, n, "q4"), *m2 = row_named(rows, n, "mse:bits=2+mse:bits=2@center=1");
    REQUIRE(fp16 && q8 && q4 && m2);
    /* the reference against itself; others above it, fewer bits above more (256 tokens:
     * q4's first 128-token chunk is coded, not all held in its q8_0 ring) */
    CHECK(fp16->kl == 0.0 && fp16->top1 == 100.0 && fp16->delta_pct == 0.0);
    CHECKF(q8->kl >= 0.0 && q8->kl < q4->kl && q4->kl < m2->kl, "KL q8_0 %g, q4 %g, 2-bit %g", q8->kl,
           q4->kl, m2->kl);
    CHECK(q4->top1 <= 100.0 && m2->top1 < 100.0 && m2->top1 > 0.0);
    CHECKF(q4->bits > 4.0 && q4->bits <= 4.5 + 64.0 * 12.0 / 128.0, "q4 bits %g", q4->bits);
    CHECK(fabs(q4->delta_pct - 100.0 * (q4->ppl / fp16->ppl - 1.0)) < 0.01);
    CHECKF(pv->ppl != q4->ppl || pv->kl != q4->kl, "q4+vq read as q4 (%g)", q4->ppl);

    snprintf(cmd, sizeof cmd, "%s generate -m " TINY " -p 'The quick brown fox' -n 40 --threads 1 "
             "--cache-preset q4 > %s/gen.txt 2>&1", kvqt_cli_path(), dir);
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "%s generate -m " TINY " -p 'The quick brown fox' -n 4 --threads 1 "
             "--cache 'mse:bits=4+q8_0@center=1,sink=1' > /dev/null 2>&1", kvqt_cli_path());
    CHECK(system(cmd) == 0);
    /* both sides named without options, and a preset's keys with other values */
    const char *whole[] = {"mse:bits=4+mse:bits=2", "q4+vq"};
    for (size_t i = 0; i < sizeof whole / sizeof whole[0]; i++) {
        snprintf(cmd, sizeof cmd, "%s generate -m " TINY " -p 'The quick brown fox' -n 4 --threads 1 "
                 "--cache '%s' > /dev/null 2>&1", kvqt_cli_path(), whole[i]);
        CHECKF(system(cmd) == 0, "--cache %s refused", whole[i]);
    }
    /* an unknown preset, a bad option, and a preset with --cache-k are refused with a reason */
    const char *bad[] = {"--cache-preset q9", "--cache-preset q4@window=x", "--cache-preset q4 --cache-k fp16"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(cmd, sizeof cmd, "%s generate -m " TINY " -p x -n 1 %s > %s/err.txt 2>&1", kvqt_cli_path(),
                 bad[i], dir);
        CHECKF(system(cmd) != 0, "%s accepted", bad[i]);
        snprintf(path, sizeof path, "%s/err.txt", dir);
        f = fopen(path, "r");
        REQUIRE(f);
        char line[512] = "";
        CHECKF(fgets(line, sizeof line, f) && strstr(line, "kvq generate"), "%s: no message", bad[i]);
        fclose(f);
    }
}

/* The first sentence of a generated answer (up to '.', '!', '?' or a newline). */
static void first_sentence(const char *text, char *out, size_t cap) {
    size_t i = 0;
    while (text[i] == ' ' || text[i] == '\n') text++;
    for (; text[i] && i + 1 < cap; i++) {
        out[i] = text[i];
        if (text[i] == '.' || text[i] == '!' || text[i] == '?' || text[i] == '\n') {
            i++;
            break;
        }
    }
    out[i] = 0;
}

static int generate_answer(const char *dir, const char *question, const char *cache, char *out, size_t cap) {
    char path[512], cmd[2048];
    snprintf(path, sizeof path, "%s/prompt.txt", dir);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    /* SmolLM2's chat template with its default system prompt, lengthened to about 200
     * tokens: the presets code a 128-token chunk once the newest 8 tokens have left it, so
     * the answer (from token ~206 on) reads coded keys and values for tokens 1-127 (the
     * short default prompt, ~45 tokens, stayed in the exact q8_0 ring) */
    fprintf(f, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
               "Face. You answer questions about the world clearly and briefly. When a user asks a "
               "question, you give the answer first, in one plain sentence, and then add a short "
               "explanation if it helps. You do not make things up: if you are not sure, you say so. "
               "You are polite and patient, and you never use rude words. You write in English unless "
               "the user writes in another language. You keep lists short, you avoid long paragraphs, "
               "and you do not repeat the question back to the user. You may use simple examples from "
               "everyday life, such as cooking, gardening, the weather, animals, sports or travel, to "
               "make an idea easier to follow. Numbers are written as digits. Units are metric unless "
               "the user asks otherwise. If the question is about science, you explain the idea behind "
               "the answer in words a child could follow.<|im_end|>\n<|im_start|>user\n%s<|im_end|>\n"
               "<|im_start|>assistant\n", question);
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s generate -m " SMOLLM2 " -p \"$(cat %s)\" -n 32 --threads 2 --quiet --float-activations %s%s "
             "> %s/answer.txt 2> /dev/null", kvqt_cli_path(), path, cache ? "--cache-preset " : "",
             cache ? cache : "", dir);
    if (system(cmd) != 0) return -1;
    snprintf(path, sizeof path, "%s/answer.txt", dir);
    f = fopen(path, "r");
    if (!f) return -1;
    char text[4096];
    size_t got = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[got] = 0;
    first_sentence(text, out, cap);
    return 0;
}


TEST(presets_real_model_q4) {
#ifdef KVQT_SANITIZED
    SKIP("the real model runs in the optimized build only (minutes under the sanitizers)");
    return;
#endif
    FILE *probe = fopen(SMOLLM2, "rb");
    if (!probe) {
        SKIP("models/ has no SmolLM2 (make model)");
        return;
    }
    fclose(probe);
    probe = fopen("data/fortunes-science.txt", "rb");
    if (!probe) {
        SKIP("data/fortunes-science.txt is missing");
        return;
    }
    fclose(probe);
    char cmd[1024], path[512];
    const char *dir = kvqt_tmpdir(kvqt_);
    REQUIRE(dir);
    snprintf(cmd, sizeof cmd, "%s perplexity -m " SMOLLM2 " -f data/fortunes-science.txt --ctx 512 "
             "--chunks 2 --threads 2 --kl --configs fp16,q4 > %s/ppl.txt 2> /dev/null", kvqt_cli_path(), dir);
    CHECK(system(cmd) == 0);
    snprintf(path, sizeof path, "%s/ppl.txt", dir);
    ppl_row rows[4];
    int n = read_ppl_rows(path, rows, 4);
    REQUIRE(n == 2);
    const ppl_row *q4 = row_named(rows, n, "q4");
    REQUIRE(q4);
    /* recorded (this command, 2026-12-05, bits weighed by the queries): +0.26 %, KL
     * 0.0055, top-1 95.9 % (2026-12-04, by range alone: +0.54 %, 0.0059, 95.7 %), 5.66
     * bits held at this context: 4.5 a number in codes (4.25, 5.25 in the keys of half
     * the layers), plus the first token and the newest 8 to 135 tokens
     * exact (q8_0) while their 128-token chunk fills. KL's floor here is about 0.004
     * (exact f32 KV against fp16 KV under int8 activations, bench/RESULTS.md); the
     * presets before channel keys read 0.048, q4 without its plan 0.0075 */
    CHECKF(q4->delta_pct < 1.0, "q4 perplexity +%.2f %% over fp16 (recorded +0.26 %%)", q4->delta_pct);
    CHECKF(q4->kl < 0.010 && q4->top1 > 92.0, "q4 KL %.4f, top-1 %.1f %%", q4->kl, q4->top1);
    CHECKF(q4->bits > 4.5 && q4->bits <= 5.8, "q4 holds %.2f bits per number", q4->bits);

    /* greedy answers with float activations: the q4 preset's first sentence is fp16's,
     * on all five, with the AVX-512 and AVX2 kernels alike (2026-12-05: all 32 tokens for
     * q4 and q3; q2 on four, "What gas do plants take in from the air?" in other words).
     * With the default int8 activations greedy text is chaotic at this size: exact f32 KV
     * already leaves fp16's answer on some prompts. Left out for near-ties: "What is the
     * largest ocean on Earth?" (q4 on AVX2 goes on past "Pacific Ocean" with a comma),
     * "What color is the sky on a clear day?" (q4 and q3 leave fp16's description when
     * the prompt ends in a newline), "How many legs does a spider have?" (a near-tie in
     * fp16's own logits on the short prompt). */
    static const char *questions[] = {"What is the capital of France?", "What is the opposite of hot?",
                                      "What do bees make?", "How many days are in a week?",
                                      "What gas do plants take in from the air?"};
    for (size_t i = 0; i < 5; i++) {
        char a[512], b[512];
        REQUIRE(generate_answer(dir, questions[i], NULL, a, sizeof a) == 0);
        REQUIRE(generate_answer(dir, questions[i], "q4", b, sizeof b) == 0);
        CHECKF(a[0] && strcmp(a, b) == 0, "'%s': fp16 '%s', q4 '%s'", questions[i], a, b);
    }
}

/* Memory held by a preset's caches for a model of SmolLM2's shape (30 layers of 3 KV heads
 * x 64, 9 query heads) and of Gemma-3-270M's (18 layers of 1 KV head x 256, 4 query heads),
 * shown queries and attended on a pool as the engine does, the layers sharing what they
 * read back alike as a context's do: below fp16 from 64 tokens on, and within 10 % of the
 * codes (window and sinks included) at 4096. */
TEST(presets_memory_below_fp16) {
    static const struct { uint32_t n_kv, dim, H, L; } shapes[] = {{3, 64, 9, 30}, {1, 256, 4, 18}};
    const size_t n = 4096;
    kvq_threadpool *pool;
    REQUIRE_OK(kvq_threadpool_create(2, &pool));
    for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++) {
        const uint32_t n_kv = shapes[sh].n_kv, dim = shapes[sh].dim, H = shapes[sh].H, L = shapes[sh].L;
        float *k = malloc(n * n_kv * dim * sizeof(float)), *v = malloc(n * n_kv * dim * sizeof(float));
        float *q = malloc(H * dim * sizeof(float)), *out = malloc(H * dim * sizeof(float));
        kvq_cache_config *cfg = malloc(L * sizeof *cfg);
        REQUIRE(k && v && q && out && cfg);
        for (size_t i = 0; i < n * n_kv * dim; i++) {
            k[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f + (i % dim < 2 ? 3.0f : 0.0f);
            v[i] = (float)((i * 40503u) % 1000) / 500.0f - 1.0f;
        }
        for (size_t i = 0; i < H * dim; i++) q[i] = (float)(i % 17) / 17.0f - 0.5f;
        for (size_t i = 0; kvq_cache_preset_at(i); i++) {
            const char *name = kvq_cache_preset_at(i)->name;
            for (uint32_t l = 0; l < L; l++)
                REQUIRE_OK(kvq_cache_config_parse_layer(name, n_kv, dim, l, L, &cfg[l], NULL, 0));
            kvq_cache_set *set;
            REQUIRE_OK(kvq_cache_set_create(L, cfg, &set));
            size_t have = 0;
            /* every 8 tokens up to 512 (the ring filling, the first chunks coded), then
             * 1024, 2048, 4096 */
            for (size_t step = 64; step <= n; step = step < 512 ? step + 8 : 2 * step) {
                for (uint32_t l = 0; l < L; l++) {
                    kvq_cache *c;
                    REQUIRE_OK(kvq_cache_set_layer(set, l, &c));
                    /* as the engine: queries shown first (their sums are held until the
                     * first chunk's bits are fixed) */
                    REQUIRE_OK(kvq_cache_observe_queries(c, q, H, 1));
                    REQUIRE_OK(kvq_cache_append(c, k + have * n_kv * dim, v + have * n_kv * dim, step - have));
                    REQUIRE_OK(kvq_cache_attend(c, q, H, 1, 0.125f, pool, out));
                }
                have = step;
                kvq_cache_memory_info m;
                REQUIRE_OK(kvq_cache_set_memory(set, &m));
                uint64_t fp16 = (uint64_t)L * 2 * have * n_kv * dim * 2;
                CHECKF(m.total < fp16, "%s, %u x %u: %zu tokens hold %llu bytes, fp16 %llu", name, n_kv, dim,
                       have, (unsigned long long)m.total, (unsigned long long)fp16);
                if (have == n) {
                    uint64_t grows = m.key_codes + m.value_codes + m.window + m.outliers;
                    CHECKF(m.total <= grows + grows / 10, "%s, %u x %u: %zu tokens: %llu held for %llu of codes",
                           name, n_kv, dim, have, (unsigned long long)m.total, (unsigned long long)grows);
                }
            }
            kvq_cache_set_free(set);
        }
        free(k), free(v), free(q), free(out), free(cfg);
    }
    kvq_threadpool_free(pool);
}

/* kvq bench takes presets and prints every attend figure beside the read ceiling it
 * measured in the same run. */
TEST(presets_bench_reads_against_the_ceiling) {
    char cmd[1024], path[512];
    const char *dir = kvqt_tmpdir(kvqt_);
    REQUIRE(dir);
    snprintf(cmd, sizeof cmd, "%s bench --quick --json --tokens 256 --methods q4,fp16/fp16 > %s/bench.json 2> /dev/null",
             kvqt_cli_path(), dir);
    REQUIRE(system(cmd) == 0);
    snprintf(path, sizeof path, "%s/bench.json", dir);
    FILE *f = fopen(path, "r");
    REQUIRE(f);
    char line[4096];
    int rows = 0;
    while (fgets(line, sizeof line, f)) {
        const char *g = strstr(line, "\"attend_gb_s\":"), *c = strstr(line, "\"read_ceiling_gb_s\":");
        const char *p = strstr(line, "\"attend_pct_of_ceiling\":"), *b = strstr(line, "\"bits\":");
        REQUIRE(g && c && p && b);
        double gbs = atof(g + 14), ceil = atof(c + 20), pct = atof(p + 24), bits = atof(b + 7);
        CHECKF(gbs > 0 && ceil > 0 && fabs(pct - 100.0 * gbs / ceil) < 0.01 + 1e-3 * pct, "%s", line);
        /* the ceiling's loads: the widest vector loads the CPU has (64-bit where none) */
        const char *w = strstr(line, "\"read_load_bits\":");
        REQUIRE(w);
        int lb = atoi(w + 17);
        CHECKF(lb == 512 ? kvq_isa_available(KVQ_ISA_AVX512)
                         : lb == 256 ? kvq_isa_available(KVQ_ISA_AVX2) && !kvq_isa_available(KVQ_ISA_AVX512)
                                     : lb == 64 && !kvq_isa_available(KVQ_ISA_AVX2),
               "load bits %d", lb);
        /* one layer outside the plan: 4.25 in codes; at 256 tokens the exact ring (8 + up
         * to 128 tokens, q8_0) adds at most 136 / 256 of 8.5 bits */
        if (rows == 0) CHECKF(bits > 4.25 && bits < 4.25 + 136.0 / 256.0 * 8.5, "q4 bits %g", bits);
        rows++;
    }
    fclose(f);
    CHECK(rows == 2);
}

/* kvq bench takes a preset's options as every other command does (the library's parser):
 * a chunk given after '@' changes the keys' bits, a bad option is named, not run. */
TEST(presets_bench_takes_cache_options) {
    const char *dir = kvqt_tmpdir(kvqt_);
    REQUIRE(dir);
    char args[256], path[512], line[4096];
    CHECK(kvqt_run_cli(kvqt_, "bench --quick --tokens 256 --methods 'q4@chunk=64' --json", NULL, 0) == 0);
    snprintf(path, sizeof path, "%s/out.txt", dir); /* kvqt_run_cli's stdout */
    FILE *f = fopen(path, "r");
    REQUIRE(f);
    int rows = 0;
    while (fgets(line, sizeof line, f)) {
        const char *kb = strstr(line, "\"key_bits\":");
        if (!kb) continue;
        /* 4 bits plus an fp16 minimum and step per channel over 64 tokens (128 without it) */
        CHECKF(fabs(atof(kb + 11) - 4.5) < 1e-9, "%s", line);
        rows++;
    }
    fclose(f);
    CHECK(rows == 1);
    const char *bad[] = {"q4@windw=16", "q4@window=abc", "q4@center=2", "q4@chunk=5000"};
    for (int i = 0; i < 4; i++) {
        snprintf(args, sizeof args, "bench --quick --tokens 256 --methods '%s'", bad[i]);
        CHECKF(kvqt_run_cli(kvqt_, args, line, sizeof line) != 0, "%s ran", bad[i]);
        CHECKF(strstr(line, "cache option") != NULL, "%s: %s", bad[i], line);
    }
}

/* kvq bench on dumped KV shows the cache every token's query before its key, as the
 * engine does: the channel-key presets run on a tiny model's dump (300 tokens: a coded
 * chunk) and report an attention error below the same keys' 2-bit one. */
TEST(presets_bench_on_dumped_kv) {
    const char *dir = kvqt_tmpdir(kvqt_);
    REQUIRE(dir);
    char cmd[2048], path[512], line[4096];
    snprintf(path, sizeof path, "%s/text.txt", dir);
    REQUIRE(kvqt_write_fox_text(path));
    snprintf(cmd, sizeof cmd, "%s generate -m " TINY " -p \"$(cat %s)\" -n 1 --threads 1 --quiet --dump-kv %s/kv "
             "> /dev/null 2>&1", kvqt_cli_path(), path, dir);
    REQUIRE(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "%s bench --kv %s/kv --threads 1 --queries 2 --methods 'q4;q2' --json > %s/b.json "
             "2> /dev/null", kvqt_cli_path(), dir, dir);
    CHECK(system(cmd) == 0);
    snprintf(path, sizeof path, "%s/b.json", dir);
    FILE *f = fopen(path, "r");
    REQUIRE(f);
    double err[2] = {-1, -1};
    int rows = 0;
    while (fgets(line, sizeof line, f) && rows < 2) {
        const char *e = strstr(line, "\"attn_rel_err\":");
        if (e) err[rows++] = atof(e + 15);
    }
    fclose(f);
    CHECKF(rows == 2 && err[0] > 0 && err[0] < err[1], "attention error q4 %g, q2 %g", err[0], err[1]);
}

/* A preset's per-layer plan comes from the layer count alone: every plan layer is the base
 * config with one more bit on the keys or the values (same method, options and chunk),
 * a plan sixth never takes more than a sixth of the layers, so the mean bits in codes
 * stay within the preset's budget (q4: 4.25 + at most 0.25, q3: 2.75 + at most 0.25,
 * head_dim 64) for any depth; on 18 and 30 layers the plan's layers are whole sixths. */
TEST(presets_layer_plan_within_budget) {
    kvq_cache_config base, cfg;
    char msg[200];
    for (size_t i = 0; kvq_cache_preset_at(i); i++) {
        const kvq_cache_preset *p = kvq_cache_preset_at(i);
        REQUIRE_OK(kvq_cache_config_parse(p->name, 3, 64, &base, NULL, 0));
        REQUIRE_OK(kvq_cache_config_parse_layer(p->name, 3, 64, 0, 0, &cfg, NULL, 0));
        CHECK(memcmp(&base, &cfg, sizeof cfg) == 0);
        CHECK_STATUS(kvq_cache_config_parse_layer(p->name, 3, 64, 4, 4, &cfg, msg, sizeof msg),
                     KVQ_ERR_INVALID_ARG);
        unsigned nk_mask = 0, nv_mask = 0;
        for (unsigned s = 0; s < 6; s++) nk_mask += p->plan_key_sixths >> s & 1u, nv_mask += p->plan_value_sixths >> s & 1u;
        for (uint32_t L = 1; L <= 100; L++) {
            uint32_t nk = 0, nv = 0;
            for (uint32_t l = 0; l < L; l++) {
                REQUIRE_OK(kvq_cache_config_parse_layer(p->name, 3, 64, l, L, &cfg, msg, sizeof msg));
                CHECK(cfg.key.method == base.key.method && cfg.value.method == base.value.method);
                CHECK(cfg.window == base.window && cfg.n_sink == base.n_sink && cfg.chunk_tokens == base.chunk_tokens);
                CHECKF(cfg.key.bits == base.key.bits || cfg.key.bits == base.key.bits + 1, "%s %u/%u", p->name, l, L);
                CHECKF(cfg.value.bits == base.value.bits || cfg.value.bits == base.value.bits + 1, "%s %u/%u", p->name,
                       l, L);
                nk += cfg.key.bits != base.key.bits;
                nv += cfg.value.bits != base.value.bits;
                /* the same layer from the CLI's spec with options after '@' */
                char with[64];
                kvq_cache_config opt;
                snprintf(with, sizeof with, "%s@window=16", p->name);
                REQUIRE_OK(kvq_cache_config_parse_layer(with, 3, 64, l, L, &opt, NULL, 0));
                CHECK(opt.key.bits == cfg.key.bits && opt.value.bits == cfg.value.bits && opt.window == 16);
            }
            CHECKF(6 * nk <= nk_mask * L && 6 * nv <= nv_mask * L, "%s, %u layers: %u key, %u value", p->name, L,
                   nk, nv);
            /* a bit on one side of a layer is half a bit a number in that layer */
            if (L >= 6) CHECKF(nk == nk_mask * (L / 6) && nv == nv_mask * (L / 6), "%s, %u layers", p->name, L);
            CHECKF(2 * (nk + nv) <= L, "%s, %u layers: %u + %u plan layers", p->name, L, nk, nv);
        }
        if (!p->plan_key_sixths && !p->plan_value_sixths) continue;
        /* 30 layers: sixths of 5 (layers 5-9 the second), 18 layers: of 3 */
        for (uint32_t L = 18; L <= 30; L += 12)
            for (uint32_t l = 0; l < L; l++) {
                REQUIRE_OK(kvq_cache_config_parse_layer(p->name, 3, 64, l, L, &cfg, NULL, 0));
                uint32_t sixth = l / (L / 6);
                CHECKF((cfg.key.bits != base.key.bits) == (p->plan_key_sixths >> sixth & 1u), "%s layer %u/%u keys",
                       p->name, l, L);
                CHECKF((cfg.value.bits != base.value.bits) == (p->plan_value_sixths >> sixth & 1u),
                       "%s layer %u/%u values", p->name, l, L);
            }
    }
}

/* PRESET+VSPEC: the preset's keys, options and plan, with VSPEC for the values the plan
 * leaves at the base spec; the plan's value layers keep theirs. */
TEST(presets_with_other_values) {
    char msg[200];
    for (size_t i = 0; kvq_cache_preset_at(i); i++) {
        const kvq_cache_preset *p = kvq_cache_preset_at(i);
        char spec[64];
        snprintf(spec, sizeof spec, "%s+vq@window=4", p->name);
        for (uint32_t l = 0; l < 30; l++) {
            kvq_cache_config base, cfg;
            REQUIRE_OK(kvq_cache_config_parse_layer(p->name, 3, 64, l, 30, &base, NULL, 0));
            CHECKF(kvq_cache_config_parse_layer(spec, 3, 64, l, 30, &cfg, msg, sizeof msg) == KVQ_OK, "%s: %s", spec,
                   msg);
            CHECK(!memcmp(&cfg.key, &base.key, sizeof cfg.key) && cfg.window == 4 && cfg.n_sink == base.n_sink &&
                  cfg.chunk_tokens == base.chunk_tokens);
            int planned = p->plan_value_spec && cfg.value.bits != 2;
            if (planned)
                CHECK(!memcmp(&cfg.value, &base.value, sizeof cfg.value));
            else
                CHECKF(cfg.value.method == KVQ_METHOD_VQ && cfg.value.bits == 2, "%s layer %u", spec, l);
        }
    }
    kvq_cache_config cfg;
    CHECK_STATUS(kvq_cache_config_parse_layer("q3+nosuch", 3, 64, 0, 30, &cfg, msg, sizeof msg), KVQ_ERR_PARSE);
}

/* A sliding-window layer of a preset takes the preset's extra bits (its bytes stop at the
 * window): the same codes, bytes and attention as that layer configured with those bits
 * outright; a full layer is untouched; the options and their refusals. */
TEST(presets_sliding_layers_take_more_bits) {
    const uint32_t n_kv = 2, dim = 64, H = 4, n = 300, W = 256;
    float *k = malloc(n * n_kv * dim * sizeof(float)), *v = malloc(n * n_kv * dim * sizeof(float));
    float *q = malloc(H * dim * sizeof(float)), *o1 = malloc(H * dim * sizeof(float)), *o2 = malloc(H * dim * sizeof(float));
    REQUIRE(k && v && q && o1 && o2);
    for (size_t i = 0; i < (size_t)n * n_kv * dim; i++) {
        k[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f + (i % dim < 2 ? 3.0f : 0.0f);
        v[i] = (float)((i * 40503u) % 1000) / 500.0f - 1.0f;
    }
    for (size_t i = 0; i < H * dim; i++) q[i] = (float)(i % 17) / 17.0f - 0.5f;
    for (size_t i = 0; kvq_cache_preset_at(i); i++) {
        const kvq_cache_preset *p = kvq_cache_preset_at(i);
        CHECKF(p->sliding_key_bits == 1 && p->sliding_value_bits <= 1, "%s", p->name);
        kvq_cache_config slid, plain, full;
        REQUIRE_OK(kvq_cache_config_preset(&slid, p->name, n_kv, dim, NULL, 0));
        full = slid;
        slid.sliding_window = W;
        plain = slid; /* the same layer with the bits given outright */
        plain.key.bits += p->sliding_key_bits;
        plain.value.bits += p->sliding_value_bits;
        plain.sliding_key_bits = plain.sliding_value_bits = 0;
        kvq_cache *a, *b, *c;
        REQUIRE_OK(kvq_cache_create(&slid, &a));
        REQUIRE_OK(kvq_cache_create(&plain, &b));
        REQUIRE_OK(kvq_cache_create(&full, &c));
        for (uint32_t t = 0; t < n; t++) {
            kvq_cache *each[3] = {a, b, c};
            for (int j = 0; j < 3; j++) {
                REQUIRE_OK(kvq_cache_observe_queries(each[j], q, H, 1));
                REQUIRE_OK(kvq_cache_append(each[j], k + (size_t)t * n_kv * dim, v + (size_t)t * n_kv * dim, 1));
            }
        }
        REQUIRE_OK(kvq_cache_attend(a, q, H, 1, 0.125f, NULL, o1));
        REQUIRE_OK(kvq_cache_attend(b, q, H, 1, 0.125f, NULL, o2));
        CHECKF(memcmp(o1, o2, H * dim * sizeof(float)) == 0, "%s: a sliding layer attends as its bits given outright",
               p->name);
        kvq_cache_memory_info ma, mb, mc;
        REQUIRE_OK(kvq_cache_memory(a, &ma));
        REQUIRE_OK(kvq_cache_memory(b, &mb));
        REQUIRE_OK(kvq_cache_memory(c, &mc));
        CHECK(ma.key_codes == mb.key_codes && ma.value_codes == mb.value_codes && ma.total == mb.total);
        /* the full layer keeps the preset's bits: fewer key bytes per coded token */
        CHECKF(mc.key_codes * 1.0 / mc.n_tokens < ma.key_codes * 1.0 / ma.n_tokens, "%s: %llu / %llu against %llu / %llu",
               p->name, (unsigned long long)mc.key_codes, (unsigned long long)mc.n_tokens,
               (unsigned long long)ma.key_codes, (unsigned long long)ma.n_tokens);
        kvq_cache_free(a), kvq_cache_free(b), kvq_cache_free(c);
    }
    /* options: the extra bits by name; refused past 7, on methods without those bits, and
     * where a layer would pass 8 bits */
    kvq_cache_config cfg;
    char msg[200];
    REQUIRE_OK(kvq_cache_config_parse("q2@slide_kbits=2,slide_vbits=0", n_kv, dim, &cfg, msg, sizeof msg));
    CHECK(cfg.sliding_key_bits == 2 && cfg.sliding_value_bits == 0);
    CHECK_STATUS(kvq_cache_config_parse("q2@slide_kbits=8", n_kv, dim, &cfg, msg, sizeof msg), KVQ_ERR_PARSE);
    CHECK(strstr(msg, "slide_kbits") != NULL);
    /* PRESET+VSPEC with values that are not rotated scalar codes: no extra value bits */
    REQUIRE_OK(kvq_cache_config_parse("q3+q8_0", n_kv, dim, &cfg, msg, sizeof msg));
    CHECK(cfg.sliding_value_bits == 0 && cfg.sliding_key_bits == 1);
    /* a layer of q3's value plan keeps its own 3-bit rotated values, and their extra bit */
    REQUIRE_OK(kvq_cache_config_parse_layer("q3+q8_0", n_kv, dim, 0, 6, &cfg, msg, sizeof msg));
    CHECK(cfg.value.method == KVQ_METHOD_TURBOQUANT_MSE && cfg.value.bits == 3 && cfg.sliding_value_bits == 1);
    REQUIRE_OK(kvq_cache_config_parse_layer("q3+q8_0", n_kv, dim, 1, 6, &cfg, msg, sizeof msg));
    CHECK(cfg.value.method == KVQ_METHOD_Q8_0 && cfg.sliding_value_bits == 0);
    kvq_cache *x = NULL;
    REQUIRE_OK(kvq_cache_config_parse("q4@slide_kbits=5", n_kv, dim, &cfg, msg, sizeof msg));
    CHECK_STATUS(kvq_cache_create(&cfg, &x), KVQ_ERR_INVALID_ARG); /* 4 + 5 bits */
    REQUIRE_OK(kvq_cache_config_parse("q8_0+mse:bits=2@slide_kbits=1", n_kv, dim, &cfg, msg, sizeof msg));
    CHECK_STATUS(kvq_cache_create(&cfg, &x), KVQ_ERR_INVALID_ARG); /* q8_0 keys have no bits to add */
    REQUIRE_OK(kvq_cache_config_parse("mse:bits=2+q8_0@slide_vbits=1", n_kv, dim, &cfg, msg, sizeof msg));
    CHECK_STATUS(kvq_cache_create(&cfg, &x), KVQ_ERR_INVALID_ARG);
    CHECK(x == NULL);
    free(k), free(v), free(q), free(o1), free(o2);
}
