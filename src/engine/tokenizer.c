/*
 * tokenizer.c - tokenizers from GGUF metadata: byte-level BPE ("gpt2": GPT-2's
 * bytes-to-unicode map, ranked merges, the gpt2 / smollm / llama3 / qwen2 pre-tokenizer
 * regexes written out as C scanners) and SentencePiece BPE ("llama": scores, byte fallback).
 */
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"

enum { TOK_NORMAL = 1, TOK_UNKNOWN = 2, TOK_CONTROL = 3, TOK_USER = 4, TOK_UNUSED = 5, TOK_BYTE = 6 };
enum { PRE_GPT2 = 0, PRE_SMOLLM, PRE_LLAMA3, PRE_QWEN2 };

typedef struct str_entry {
    const char *s;
    uint32_t len;
    int32_t id; /* -1: empty slot */
} str_entry;

typedef struct pair_entry {
    uint64_t key; /* left << 32 | right; UINT64_MAX: empty */
    uint32_t rank;
    int32_t result;
} pair_entry;

struct kvqi_tokenizer {
    int spm;                 /* 1: SentencePiece ("llama"), 0: byte-level BPE */
    int pre;                 /* PRE_* */
    uint32_t n_vocab;
    const char **text;       /* token strings in the file */
    uint32_t *len;
    int32_t *type;           /* TOK_* (TOK_NORMAL when the file has no types) */
    float *score;            /* SentencePiece scores (NULL for BPE) */
    str_entry *by_text;      /* open addressing, size mask + 1 */
    size_t text_mask;
    pair_entry *merges;      /* open addressing */
    size_t merge_mask;
    int32_t byte_token[256]; /* BPE: id of each byte's unicode char; SPM: <0xXX> */
    uint8_t cp_to_byte[512]; /* inverse of bytes-to-unicode (code points < 324) */
    uint8_t cp_is_byte[512];
    int32_t *specials;       /* control / user-defined tokens matched literally in text, */
    uint32_t n_specials;     /* by first byte, longest first within a byte */
    uint32_t special_start[257]; /* specials[special_start[b]..special_start[b+1]) begin with b */
    int32_t bos, eos, unk;
    int add_bos;
    int add_space_prefix;
};

typedef struct special_key {
    uint8_t first;
    uint32_t len;
    int32_t id;
} special_key;

/* first byte ascending, then length descending, then id: a total order, so the same on
 * every platform's qsort */
static int by_first_then_longest(const void *a, const void *b) {
    const special_key *x = a, *y = b;
    if (x->first != y->first) return x->first < y->first ? -1 : 1;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* ------------------------------------------------------------ hashing */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static int32_t lookup(const kvqi_tokenizer *t, const char *s, size_t n) {
    for (size_t i = hash_bytes(s, n) & t->text_mask;; i = (i + 1) & t->text_mask) {
        const str_entry *e = &t->by_text[i];
        if (e->id < 0) return -1;
        if (e->len == n && !memcmp(e->s, s, n)) return e->id;
    }
}

static const pair_entry *find_merge(const kvqi_tokenizer *t, int32_t a, int32_t b) {
    if (!t->merges) return NULL;
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (size_t i = hash_u64(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const pair_entry *e = &t->merges[i];
        if (e->key == UINT64_MAX) return NULL;
        if (e->key == key) return e;
    }
}

static size_t table_size(size_t n) {
    size_t s = 16;
    while (s < 2 * n) s <<= 1;
    return s;
}

/* ------------------------------------------------------------ utf-8 */

/* Decode one code point; malformed bytes decode as themselves (one byte, cp 0xFFFD). */
static size_t utf8_next(const char *s, size_t n, uint32_t *cp) {
    const uint8_t *u = (const uint8_t *)s;
    if (u[0] < 0x80) {
        *cp = u[0];
        return 1;
    }
    size_t len = (u[0] & 0xe0) == 0xc0 ? 2 : (u[0] & 0xf0) == 0xe0 ? 3 : (u[0] & 0xf8) == 0xf0 ? 4 : 0;
    if (len == 0 || len > n) {
        *cp = 0xfffd;
        return 1;
    }
    uint32_t c = u[0] & (0x7f >> len);
    for (size_t i = 1; i < len; i++) {
        if ((u[i] & 0xc0) != 0x80) {
            *cp = 0xfffd;
            return 1;
        }
        c = c << 6 | (u[i] & 0x3f);
    }
    *cp = c;
    return len;
}

static size_t utf8_put(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Unicode classes the pre-tokenizer regexes use, approximated by ranges: ASCII exactly,
 * the common punctuation, symbol, digit and space blocks; other code points count as
 * letters (marks too, which rarely start a word). */
static int is_space(uint32_t c) {
    return c == ' ' || (c >= 9 && c <= 13) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
           c == 0x205f || c == 0x3000;
}

static int is_number(uint32_t c) {
    if (c < 0x80) return c >= '0' && c <= '9';
    return c == 0xb2 || c == 0xb3 || c == 0xb9 || (c >= 0xbc && c <= 0xbe) ||
           (c >= 0x660 && c <= 0x669) || (c >= 0x6f0 && c <= 0x6f9) || (c >= 0x966 && c <= 0x96f) ||
           (c >= 0x2070 && c <= 0x2079) || (c >= 0x2080 && c <= 0x2089) ||
           (c >= 0x2150 && c <= 0x2189) || (c >= 0x2460 && c <= 0x249b) ||
           (c >= 0x24ea && c <= 0x24ff) || (c >= 0x2776 && c <= 0x2793) ||
           (c >= 0xff10 && c <= 0xff19);
}

static int is_letter(uint32_t c) {
    if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (is_space(c) || is_number(c)) return 0;
    if (c < 0xc0) return c == 0xaa || c == 0xb5 || c == 0xba;
    if (c == 0xd7 || c == 0xf7) return 0;
    if (c >= 0x300 && c <= 0x36f) return 0;           /* combining marks */
    if (c >= 0x2000 && c <= 0x2bff) return c >= 0x2100 && c <= 0x214f && c != 0x2116; /* punctuation, symbols, arrows */
    if (c >= 0x3000 && c <= 0x303f) return 0;         /* CJK punctuation */
    if (c >= 0xe000 && c <= 0xf8ff) return 0;         /* private use */
    if (c >= 0xfe00 && c <= 0xfe0f) return 0;         /* variation selectors */
    if (c >= 0xff00 && c <= 0xff20) return 0;         /* fullwidth punctuation */
    if (c >= 0x1f000 && c <= 0x1faff) return 0;       /* emoji and symbols */
    if (c == 0xfffd) return 0;
    return 1;
}

/* ------------------------------------------------------------ loading */

void kvqi_tokenizer_free(kvqi_tokenizer *t) {
    if (!t) return;
    free(t->text);
    free(t->len);
    free(t->type);
    free(t->score);
    free(t->by_text);
    free(t->merges);
    free(t->specials);
    free(t);
}

/* GPT-2's reversible map from bytes to printable code points. */
static void bytes_to_unicode(uint32_t cps[256]) {
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
        cps[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
    }
}

static kvq_status load_merges(kvqi_tokenizer *t, const kvqi_gguf_kv *kv, char *msg, size_t msg_size) {
    size_t n = (size_t)kv->arr_n;
    const char **ptrs = kvqi_alloc_array(n ? n : 1, sizeof *ptrs);
    uint32_t *lens = kvqi_alloc_array(n ? n : 1, sizeof *lens);
    t->merge_mask = table_size(n) - 1;
    t->merges = kvqi_alloc_array(t->merge_mask + 1, sizeof *t->merges);
    kvq_status st = KVQ_OK;
    if (!ptrs || !lens || !t->merges) {
        st = KVQ_ERR_NOMEM;
        goto done;
    }
    for (size_t i = 0; i <= t->merge_mask; i++) t->merges[i].key = UINT64_MAX;
    if ((st = kvqi_gguf_string_array(kv, ptrs, lens))) goto done;
    char buf[512];
    for (size_t r = 0; r < n; r++) {
        const char *s = ptrs[r];
        uint32_t len = lens[r];
        /* "left right": the first space after the first character separates them */
        uint32_t sp = 1;
        while (sp < len && s[sp] != ' ') sp++;
        if (sp >= len) {
            kvqi_set_msg(msg, msg_size, "tokenizer: merge %zu is not two tokens", r);
            st = KVQ_ERR_FORMAT;
            goto done;
        }
        if (len - 1 >= sizeof buf) continue; /* no token is that long: the merge never applies */
        int32_t a = lookup(t, s, sp), b = lookup(t, s + sp + 1, len - sp - 1);
        memcpy(buf, s, sp);
        memcpy(buf + sp, s + sp + 1, len - sp - 1);
        int32_t ab = lookup(t, buf, len - 1);
        if (a < 0 || b < 0 || ab < 0) continue; /* merges of unknown tokens never apply */
        uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
        size_t i = hash_u64(key) & t->merge_mask;
        while (t->merges[i].key != UINT64_MAX && t->merges[i].key != key) i = (i + 1) & t->merge_mask;
        if (t->merges[i].key == key) continue; /* the first (best) rank wins */
        t->merges[i].key = key;
        t->merges[i].rank = (uint32_t)r;
        t->merges[i].result = ab;
    }
done:
    kvqi_free(ptrs);
    kvqi_free(lens);
    return st;
}

static int32_t get_token_id(const kvqi_gguf *g, const char *key, uint32_t n_vocab) {
    uint32_t v;
    if (kvqi_gguf_get_u32(g, key, &v) != KVQ_OK || v >= n_vocab) return -1;
    return (int32_t)v;
}

kvq_status kvqi_tokenizer_load(const kvqi_gguf *g, kvqi_tokenizer **out, char *msg, size_t msg_size) {
    *out = NULL;
    char model[32] = "", pre[32] = "";
    if (kvqi_gguf_get_str(g, "tokenizer.ggml.model", model, sizeof model) != KVQ_OK) {
        kvqi_set_msg(msg, msg_size, "tokenizer: tokenizer.ggml.model missing");
        return KVQ_ERR_FORMAT;
    }
    kvqi_gguf_get_str(g, "tokenizer.ggml.pre", pre, sizeof pre);
    int spm;
    if (!strcmp(model, "gpt2")) spm = 0;
    else if (!strcmp(model, "llama")) spm = 1;
    else {
        kvqi_set_msg(msg, msg_size, "tokenizer: model '%s' not supported (gpt2 and llama are)", model);
        return KVQ_ERR_UNSUPPORTED;
    }
    const kvqi_gguf_kv *tok = kvqi_gguf_find(g, "tokenizer.ggml.tokens");
    if (!tok || tok->type != KVQI_GGUF_ARRAY || tok->arr_type != KVQI_GGUF_STRING || tok->arr_n == 0 ||
        tok->arr_n > (1u << 24)) {
        kvqi_set_msg(msg, msg_size, "tokenizer: tokenizer.ggml.tokens missing or not a list of strings");
        return KVQ_ERR_FORMAT;
    }
    kvqi_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return KVQ_ERR_NOMEM;
    kvq_status st = KVQ_OK;
    uint32_t n = (uint32_t)tok->arr_n;
    t->spm = spm;
    t->n_vocab = n;
    t->pre = !strcmp(pre, "smollm") ? PRE_SMOLLM
             : (!strcmp(pre, "llama3") || !strcmp(pre, "llama-bpe") || !strcmp(pre, "llama-v3")) ? PRE_LLAMA3
             : !strcmp(pre, "qwen2") ? PRE_QWEN2
                                     : PRE_GPT2;
    t->text = kvqi_alloc_array(n, sizeof *t->text);
    t->len = kvqi_alloc_array(n, sizeof *t->len);
    t->type = kvqi_alloc_array(n, sizeof *t->type);
    t->text_mask = table_size(n) - 1;
    t->by_text = kvqi_alloc_array(t->text_mask + 1, sizeof *t->by_text);
    if (!t->text || !t->len || !t->type || !t->by_text) {
        st = KVQ_ERR_NOMEM;
        goto fail;
    }
    if ((st = kvqi_gguf_string_array(tok, t->text, t->len))) goto fail;
    for (size_t i = 0; i <= t->text_mask; i++) t->by_text[i].id = -1;
    for (uint32_t id = 0; id < n; id++) {
        size_t i = hash_bytes(t->text[id], t->len[id]) & t->text_mask;
        int dup = 0;
        for (; t->by_text[i].id >= 0; i = (i + 1) & t->text_mask)
            if (t->by_text[i].len == t->len[id] && !memcmp(t->by_text[i].s, t->text[id], t->len[id])) dup = 1;
        if (dup) continue; /* the lowest id keeps the text */
        t->by_text[i].s = t->text[id];
        t->by_text[i].len = t->len[id];
        t->by_text[i].id = (int32_t)id;
    }
    const kvqi_gguf_kv *types = kvqi_gguf_find(g, "tokenizer.ggml.token_type");
    for (uint32_t id = 0; id < n; id++) t->type[id] = TOK_NORMAL;
    if (types) {
        if (types->type != KVQI_GGUF_ARRAY || types->arr_type != KVQI_GGUF_I32 || types->arr_n != n) {
            kvqi_set_msg(msg, msg_size, "tokenizer: token_type is not %u int32 values", n);
            st = KVQ_ERR_FORMAT;
            goto fail;
        }
        for (uint32_t id = 0; id < n; id++) memcpy(&t->type[id], types->arr + 4 * (size_t)id, 4);
    }
    if (spm) {
        const kvqi_gguf_kv *sc = kvqi_gguf_find(g, "tokenizer.ggml.scores");
        t->score = kvqi_calloc_array(n, sizeof *t->score);
        if (!t->score) {
            st = KVQ_ERR_NOMEM;
            goto fail;
        }
        if (sc) {
            if (sc->type != KVQI_GGUF_ARRAY || sc->arr_type != KVQI_GGUF_F32 || sc->arr_n != n) {
                kvqi_set_msg(msg, msg_size, "tokenizer: scores are not %u float32 values", n);
                st = KVQ_ERR_FORMAT;
                goto fail;
            }
            memcpy(t->score, sc->arr, (size_t)n * 4);
        }
        for (int b = 0; b < 256; b++) {
            char name[8];
            static const char hex[] = "0123456789ABCDEF";
            name[0] = '<'; name[1] = '0'; name[2] = 'x';
            name[3] = hex[b >> 4]; name[4] = hex[b & 15]; name[5] = '>';
            t->byte_token[b] = lookup(t, name, 6);
        }
        t->add_space_prefix = 1;
    } else {
        uint32_t cps[256];
        bytes_to_unicode(cps);
        for (int b = 0; b < 256; b++) {
            char u[4];
            size_t k = utf8_put(cps[b], u);
            t->byte_token[b] = lookup(t, u, k);
            t->cp_to_byte[cps[b]] = (uint8_t)b;
            t->cp_is_byte[cps[b]] = 1;
        }
        const kvqi_gguf_kv *merges = kvqi_gguf_find(g, "tokenizer.ggml.merges");
        if (!merges || merges->type != KVQI_GGUF_ARRAY || merges->arr_type != KVQI_GGUF_STRING) {
            kvqi_set_msg(msg, msg_size, "tokenizer: tokenizer.ggml.merges missing for a gpt2 tokenizer");
            st = KVQ_ERR_FORMAT;
            goto fail;
        }
        if ((st = load_merges(t, merges, msg, msg_size))) goto fail;
    }
    int flag;
    if (kvqi_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &flag) == KVQ_OK) t->add_space_prefix = flag;
    t->bos = get_token_id(g, "tokenizer.ggml.bos_token_id", n);
    t->eos = get_token_id(g, "tokenizer.ggml.eos_token_id", n);
    t->unk = get_token_id(g, "tokenizer.ggml.unknown_token_id", n);
    t->add_bos = spm;
    if (kvqi_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &flag) == KVQ_OK) t->add_bos = flag;
    /* special tokens by first byte, longest first, so "<|im_start|>" wins over a prefix of
     * it; Gemma's vocabulary has thousands, so a text position only tries its byte's */
    t->specials = kvqi_alloc_array(n, sizeof *t->specials);
    special_key *keys = kvqi_alloc_array(n, sizeof *keys);
    if (!t->specials || !keys) {
        kvqi_free(keys);
        st = KVQ_ERR_NOMEM;
        goto fail;
    }
    for (uint32_t id = 0; id < n; id++)
        if ((t->type[id] == TOK_CONTROL || t->type[id] == TOK_USER) && t->len[id] > 0) {
            special_key *k = &keys[t->n_specials++];
            k->first = (uint8_t)t->text[id][0];
            k->len = t->len[id];
            k->id = (int32_t)id;
        }
    qsort(keys, t->n_specials, sizeof *keys, by_first_then_longest);
    memset(t->special_start, 0, sizeof t->special_start);
    for (uint32_t i = 0; i < t->n_specials; i++) {
        t->specials[i] = keys[i].id;
        t->special_start[keys[i].first + 1]++;
    }
    for (int b = 0; b < 256; b++) t->special_start[b + 1] += t->special_start[b];
    kvqi_free(keys);
    *out = t;
    return KVQ_OK;
fail:
    kvqi_tokenizer_free(t);
    return st;
}

uint32_t kvqi_tokenizer_vocab(const kvqi_tokenizer *t) { return t->n_vocab; }
int32_t kvqi_tokenizer_bos(const kvqi_tokenizer *t) { return t->bos; }
int32_t kvqi_tokenizer_eos(const kvqi_tokenizer *t) { return t->eos; }
int kvqi_tokenizer_add_bos(const kvqi_tokenizer *t) { return t->add_bos; }

int32_t kvqi_tokenizer_find_special(const kvqi_tokenizer *t, const char *text) {
    size_t n = strlen(text);
    for (uint32_t k = 0; k < t->n_specials; k++) {
        int32_t id = t->specials[k];
        if (t->len[id] == n && !memcmp(t->text[id], text, n)) return id;
    }
    return -1;
}

/* ------------------------------------------------------------ encoding */

typedef struct emitter {
    int32_t *tokens;
    size_t cap;
    size_t n;
} emitter;

static void emit(emitter *e, int32_t id) {
    if (e->n < e->cap) e->tokens[e->n] = id;
    e->n++;
}

/* Byte-level BPE of one pre-tokenized piece. Pieces are short (a word), so the
 * quadratic lowest-rank search costs less than a heap. */
#define PIECE_MAX 256
static void bpe_piece(const kvqi_tokenizer *t, const char *s, size_t n, emitter *e) {
    int32_t sym[PIECE_MAX];
    while (n > PIECE_MAX) { /* a very long run (e.g. spaces) goes in slices */
        bpe_piece(t, s, PIECE_MAX, e);
        s += PIECE_MAX;
        n -= PIECE_MAX;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_token[(uint8_t)s[i]];
        sym[m++] = id >= 0 ? id : t->unk;
    }
    for (;;) {
        uint32_t best = UINT32_MAX;
        size_t at = 0;
        int32_t result = -1;
        for (size_t i = 0; i + 1 < m; i++) {
            if (sym[i] < 0 || sym[i + 1] < 0) continue;
            const pair_entry *p = find_merge(t, sym[i], sym[i + 1]);
            if (p && p->rank < best) {
                best = p->rank;
                at = i;
                result = p->result;
            }
        }
        if (result < 0) break;
        sym[at] = result;
        memmove(sym + at + 1, sym + at + 2, (m - at - 2) * sizeof *sym);
        m--;
    }
    for (size_t i = 0; i < m; i++)
        if (sym[i] >= 0) emit(e, sym[i]);
}

typedef struct scanner {
    const char *s;
    size_t n;
} scanner;

static uint32_t cp_at(const scanner *sc, size_t i, size_t *len) {
    uint32_t cp;
    size_t l = utf8_next(sc->s + i, sc->n - i, &cp);
    if (len) *len = l;
    return cp;
}

/* Length in bytes of the run of code points from i satisfying pred. */
static size_t run(const scanner *sc, size_t i, int (*pred)(uint32_t), size_t max_cps) {
    size_t j = i, k = 0;
    while (j < sc->n && k < max_cps) {
        size_t l;
        uint32_t c = cp_at(sc, j, &l);
        if (!pred(c)) break;
        j += l;
        k++;
    }
    return j - i;
}

static int is_other(uint32_t c) { return !is_space(c) && !is_letter(c) && !is_number(c); }
static int is_newline(uint32_t c) { return c == '\r' || c == '\n'; }

static size_t contraction(const scanner *sc, size_t i, int ignore_case) {
    if (sc->s[i] != '\'' || i + 1 >= sc->n) return 0;
    char a = sc->s[i + 1], b = i + 2 < sc->n ? sc->s[i + 2] : 0;
    if (ignore_case) {
        if (a >= 'A' && a <= 'Z') a = (char)(a + 32);
        if (b >= 'A' && b <= 'Z') b = (char)(b + 32);
    }
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    return 0;
}

/* \s+(?!\S)|\s+ at i (i is a space): the run, less its last character when a
 * non-space follows and the run has more than one character. */
static size_t whitespace(const scanner *sc, size_t i) {
    size_t j = i, last = i;
    while (j < sc->n) {
        size_t l;
        uint32_t c = cp_at(sc, j, &l);
        if (!is_space(c)) break;
        last = j;
        j += l;
    }
    if (j < sc->n && last > i) return last - i;
    return j - i;
}

/* GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static size_t match_gpt2(const scanner *sc, size_t i) {
    size_t k = contraction(sc, i, 0);
    if (k) return k;
    size_t j = i + (sc->s[i] == ' ' ? 1 : 0);
    if (j < sc->n) {
        uint32_t c = cp_at(sc, j, NULL);
        if (is_letter(c)) return j - i + run(sc, j, is_letter, SIZE_MAX);
        if (is_number(c)) return j - i + run(sc, j, is_number, SIZE_MAX);
        if (is_other(c)) return j - i + run(sc, j, is_other, SIZE_MAX);
    }
    return whitespace(sc, i);
}

/* Llama 3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 * ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+  (qwen2: \p{N} one at a time) */
static size_t match_llama3(const scanner *sc, size_t i, size_t max_digits) {
    size_t k = contraction(sc, i, 1);
    if (k) return k;
    size_t l0;
    uint32_t c = cp_at(sc, i, &l0);
    if (is_letter(c)) return run(sc, i, is_letter, SIZE_MAX);
    if (!is_newline(c) && !is_number(c) && i + l0 < sc->n && is_letter(cp_at(sc, i + l0, NULL)))
        return l0 + run(sc, i + l0, is_letter, SIZE_MAX);
    if (is_number(c)) return run(sc, i, is_number, max_digits);
    size_t j = i + (c == ' ' ? 1 : 0);
    if (j < sc->n && is_other(cp_at(sc, j, NULL))) {
        j += run(sc, j, is_other, SIZE_MAX);
        return j - i + run(sc, j, is_newline, SIZE_MAX);
    }
    /* \s*[\r\n]+: up to the end of the last newline inside the whitespace run */
    size_t end = i, j2 = i;
    while (j2 < sc->n) {
        size_t l;
        uint32_t d = cp_at(sc, j2, &l);
        if (!is_space(d)) break;
        j2 += l;
        if (is_newline(d)) end = j2;
    }
    if (end > i) return end - i;
    return whitespace(sc, i);
}

static void bpe_text(const kvqi_tokenizer *t, const char *s, size_t n, emitter *e) {
    scanner sc = {s, n};
    size_t i = 0;
    while (i < n) {
        size_t k;
        if (t->pre == PRE_SMOLLM) {
            /* digits are split off one by one before the GPT-2 regex runs on the rest */
            size_t l;
            uint32_t c = cp_at(&sc, i, &l);
            if (is_number(c)) {
                bpe_piece(t, s + i, l, e);
                i += l;
                continue;
            }
            size_t j = i;
            while (j < n) {
                size_t l2;
                if (is_number(cp_at(&sc, j, &l2))) break;
                j += l2;
            }
            scanner seg = {s + i, j - i};
            size_t p = 0;
            while (p < seg.n) {
                k = match_gpt2(&seg, p);
                bpe_piece(t, seg.s + p, k, e);
                p += k;
            }
            i = j;
            continue;
        }
        if (t->pre == PRE_LLAMA3) k = match_llama3(&sc, i, 3);
        else if (t->pre == PRE_QWEN2) k = match_llama3(&sc, i, 1);
        else k = match_gpt2(&sc, i);
        if (k == 0) k = 1; /* never stall on a byte no rule takes */
        bpe_piece(t, s + i, k, e);
        i += k;
    }
}

/* SentencePiece BPE on one word ("▁" marks spaces): merge the adjacent pair whose
 * concatenation is a token with the best score; leftovers go out as <0xXX> bytes. */
typedef struct spm_sym {
    uint32_t start, len;
} spm_sym;

static void spm_word(const kvqi_tokenizer *t, const char *s, size_t n, emitter *e) {
    spm_sym sym[PIECE_MAX];
    while (n > PIECE_MAX) {
        size_t cut = PIECE_MAX;
        while (cut > 1 && ((uint8_t)s[cut] & 0xc0) == 0x80) cut--;
        spm_word(t, s, cut, e);
        s += cut;
        n -= cut;
    }
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t l = utf8_next(s + i, n - i, &cp);
        sym[m].start = (uint32_t)i;
        sym[m].len = (uint32_t)l;
        m++;
        i += l;
    }
    for (;;) {
        float best = 0;
        size_t at = SIZE_MAX;
        for (size_t i = 0; i + 1 < m; i++) {
            int32_t id = lookup(t, s + sym[i].start, sym[i].len + sym[i + 1].len);
            if (id >= 0 && (at == SIZE_MAX || t->score[id] > best)) {
                best = t->score[id];
                at = i;
            }
        }
        if (at == SIZE_MAX) break;
        sym[at].len += sym[at + 1].len;
        memmove(sym + at + 1, sym + at + 2, (m - at - 2) * sizeof *sym);
        m--;
    }
    for (size_t i = 0; i < m; i++) {
        int32_t id = lookup(t, s + sym[i].start, sym[i].len);
        if (id >= 0) {
            emit(e, id);
            continue;
        }
        for (uint32_t b = 0; b < sym[i].len; b++) {
            int32_t bt = t->byte_token[(uint8_t)s[sym[i].start + b]];
            emit(e, bt >= 0 ? bt : t->unk);
        }
    }
}

static kvq_status spm_text(const kvqi_tokenizer *t, const char *s, size_t n, int first, emitter *e) {
    /* spaces become U+2581 (3 bytes); one more in front of the text */
    size_t cap;
    if (kvqi_mul_size(n + 1, 3, &cap)) return KVQ_ERR_OVERFLOW;
    char *buf = malloc(cap + 1);
    if (!buf) return KVQ_ERR_NOMEM;
    size_t m = 0;
    if (first && t->add_space_prefix && n > 0) {
        memcpy(buf, "\xe2\x96\x81", 3);
        m = 3;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') {
            memcpy(buf + m, "\xe2\x96\x81", 3);
            m += 3;
        } else {
            buf[m++] = s[i];
        }
    }
    size_t w = 0;
    for (size_t i = 3; i <= m; i++) {
        if (i == m || (i + 3 <= m && !memcmp(buf + i, "\xe2\x96\x81", 3) && memcmp(buf + i - 3, "\xe2\x96\x81", 3))) {
            spm_word(t, buf + w, i - w, e);
            w = i;
        }
    }
    if (m > 0 && m < 3) spm_word(t, buf, m, e);
    free(buf);
    return KVQ_OK;
}

kvq_status kvqi_tokenize(const kvqi_tokenizer *t, const char *text, int add_bos, int32_t *tokens,
                         size_t cap, size_t *n_tokens) {
    if (!t || !text || !n_tokens || (!tokens && cap)) return KVQ_ERR_INVALID_ARG;
    emitter e = {tokens, cap, 0};
    if (add_bos < 0) add_bos = t->add_bos;
    if (add_bos && t->bos >= 0) emit(&e, t->bos);
    size_t n = strlen(text), start = 0, i = 0;
    int first = 1;
    kvq_status st = KVQ_OK;
    while (i <= n) {
        int32_t special = -1;
        if (i < n)
            for (uint32_t k = t->special_start[(uint8_t)text[i]]; k < t->special_start[(uint8_t)text[i] + 1]; k++) {
                int32_t id = t->specials[k];
                if (t->len[id] <= n - i && !memcmp(text + i, t->text[id], t->len[id])) {
                    special = id;
                    break;
                }
            }
        if (special < 0 && i < n) {
            i++;
            continue;
        }
        if (i > start) {
            if (t->spm) st = spm_text(t, text + start, i - start, first, &e);
            else bpe_text(t, text + start, i - start, &e);
            if (st) return st;
            first = 0;
        }
        if (special < 0) break;
        emit(&e, special);
        i += t->len[special];
        start = i;
    }
    *n_tokens = e.n;
    return e.n > cap ? KVQ_ERR_CAPACITY : KVQ_OK;
}

/* ------------------------------------------------------------ decoding */

kvq_status kvqi_token_piece(const kvqi_tokenizer *t, int32_t token, char *buf, size_t size, size_t *len) {
    if (!t || !len || (!buf && size)) return KVQ_ERR_INVALID_ARG;
    if (token < 0 || (uint32_t)token >= t->n_vocab) return KVQ_ERR_INVALID_ARG;
    const char *s = t->text[token];
    size_t n = t->len[token], m = 0;
    char tmp[8];
    /* worst case output is the token's own length */
    if (t->type[token] == TOK_CONTROL || t->type[token] == TOK_USER || t->type[token] == TOK_UNKNOWN) {
        for (size_t i = 0; i < n; i++) {
            if (m < size) buf[m] = s[i];
            m++;
        }
    } else if (t->spm) {
        if (t->type[token] == TOK_BYTE && n == 6 && s[0] == '<') {
            unsigned v = 0;
            for (int k = 3; k < 5; k++) {
                char c = s[k];
                v = v * 16 + (unsigned)(c >= 'A' ? (c & ~0x20) - 'A' + 10 : c - '0');
            }
            if (m < size) buf[m] = (char)(v & 0xff);
            m++;
        } else {
            for (size_t i = 0; i < n;) {
                if (i + 3 <= n && !memcmp(s + i, "\xe2\x96\x81", 3)) {
                    if (m < size) buf[m] = ' ';
                    m++;
                    i += 3;
                } else {
                    if (m < size) buf[m] = s[i];
                    m++;
                    i++;
                }
            }
        }
    } else {
        for (size_t i = 0; i < n;) {
            uint32_t cp;
            size_t l = utf8_next(s + i, n - i, &cp);
            if (cp < 512 && t->cp_is_byte[cp]) {
                if (m < size) buf[m] = (char)t->cp_to_byte[cp];
                m++;
            } else {
                size_t k = utf8_put(cp, tmp);
                for (size_t q = 0; q < k; q++) {
                    if (m < size) buf[m] = tmp[q];
                    m++;
                }
            }
            i += l;
        }
    }
    *len = m;
    if (m < size) buf[m] = 0;
    return m < size ? KVQ_OK : KVQ_ERR_CAPACITY;
}
