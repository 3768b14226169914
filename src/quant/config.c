/*
 * config.c - quantizer config strings: "method:key=value,..." parsed into a kvq_config
 * with the method's defaults, and formatted back canonically (format -> parse gives the
 * same config). Every error names the method or key it could not take.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/quant.h"

typedef struct method_name {
    const char *name;
    kvq_method method;
} method_name;

/* Canonical names first (kvq_method_name returns those), aliases after. */
static const method_name k_names[] = {
    {"fp16", KVQ_METHOD_FP16},
    {"q8_0", KVQ_METHOD_Q8_0},
    {"q4_0", KVQ_METHOD_Q4_0},
    {"turboquant_mse", KVQ_METHOD_TURBOQUANT_MSE},
    {"turboquant_prod", KVQ_METHOD_TURBOQUANT_PROD},
    {"turboquant_rvq", KVQ_METHOD_TURBOQUANT_RVQ},
    {"qjl", KVQ_METHOD_QJL},
    {"polarquant", KVQ_METHOD_POLARQUANT},
    {"rabitq", KVQ_METHOD_RABITQ},
    {"vecinfer", KVQ_METHOD_VECINFER},
    {"spectral", KVQ_METHOD_SPECTRAL},
    {"comm_vq", KVQ_METHOD_COMM_VQ},
    {"channel", KVQ_METHOD_CHANNEL},
    {"vq", KVQ_METHOD_VQ},
    {"mse", KVQ_METHOD_TURBOQUANT_MSE},
    {"prod", KVQ_METHOD_TURBOQUANT_PROD},
    {"rvq", KVQ_METHOD_TURBOQUANT_RVQ},
    {"polar", KVQ_METHOD_POLARQUANT},
    {"commvq", KVQ_METHOD_COMM_VQ},
    {"spectralquant", KVQ_METHOD_SPECTRAL},
    {"f16", KVQ_METHOD_FP16}, /* llama.cpp's name (-ctk f16) */
    {"kivi", KVQ_METHOD_CHANNEL},
};

KVQ_API const char *kvq_method_name(kvq_method method) {
    for (size_t i = 0; i < sizeof k_names / sizeof k_names[0]; i++)
        if (k_names[i].method == method) return k_names[i].name;
    return NULL;
}

/* Keys, in the canonical order kvq_config_format prints them. */
enum {
    K_BITS = 1u << 0,
    K_RESIDUALS = 1u << 1,
    K_ROTATE = 1u << 2,
    K_SEED = 1u << 3,
    K_PROJ_DIM = 1u << 4,
    K_QUERY_BITS = 1u << 5,
    K_SPLIT = 1u << 6,
    K_NLIST = 1u << 7,
    K_EPS0 = 1u << 8,
    K_SUB_DIM = 1u << 9,
    K_N_CODEBOOKS = 1u << 10,
    K_ARTIFACT = 1u << 11,
    K_ISA = 1u << 12,
    K_ROPE_BASE = 1u << 13,
    K_ROPE = 1u << 14
};

static unsigned method_keys(kvq_method m) {
    switch (m) {
    case KVQ_METHOD_FP16:
    case KVQ_METHOD_Q8_0:
    case KVQ_METHOD_Q4_0: return K_ISA;
    case KVQ_METHOD_TURBOQUANT_MSE: return K_BITS | K_ROTATE | K_SEED | K_ISA;
    case KVQ_METHOD_TURBOQUANT_PROD: return K_BITS | K_ROTATE | K_SEED | K_PROJ_DIM | K_ISA;
    case KVQ_METHOD_TURBOQUANT_RVQ: return K_BITS | K_RESIDUALS | K_ROTATE | K_SEED | K_ISA;
    case KVQ_METHOD_QJL: return K_SEED | K_PROJ_DIM | K_ISA;
    case KVQ_METHOD_POLARQUANT: return K_BITS | K_ROTATE | K_SEED | K_ISA;
    case KVQ_METHOD_RABITQ:
        return K_BITS | K_ROTATE | K_SEED | K_QUERY_BITS | K_SPLIT | K_NLIST | K_EPS0 | K_ISA;
    case KVQ_METHOD_VECINFER: return K_BITS | K_SUB_DIM | K_SEED | K_ARTIFACT | K_ISA;
    case KVQ_METHOD_SPECTRAL: return K_BITS | K_SEED | K_ARTIFACT | K_ISA;
    case KVQ_METHOD_CHANNEL: return K_BITS | K_ROPE_BASE | K_ROPE | K_ISA;
    case KVQ_METHOD_VQ: return K_BITS | K_ROTATE | K_SEED | K_ISA;
    case KVQ_METHOD_COMM_VQ:
        return K_BITS | K_N_CODEBOOKS | K_SEED | K_ROPE_BASE | K_ROPE | K_ARTIFACT | K_ISA;
    default: return 0;
    }
}

static int method_rotates(kvq_method m) {
    return m == KVQ_METHOD_TURBOQUANT_MSE || m == KVQ_METHOD_TURBOQUANT_PROD ||
           m == KVQ_METHOD_TURBOQUANT_RVQ || m == KVQ_METHOD_POLARQUANT ||
           m == KVQ_METHOD_RABITQ || m == KVQ_METHOD_VQ;
}

void kvqi_config_resolve(kvq_config *c) {
    unsigned keys = method_keys(c->method);
    if (c->rotate < 0) c->rotate = method_rotates(c->method) ? KVQI_ROT_HADAMARD : KVQI_ROT_NONE;
    if (!(keys & K_ROTATE)) c->rotate = KVQI_ROT_NONE;
    switch (c->method) {
    case KVQ_METHOD_FP16: c->bits = 16; break;
    case KVQ_METHOD_Q8_0: c->bits = 8; break;
    case KVQ_METHOD_Q4_0: c->bits = 4; break;
    case KVQ_METHOD_TURBOQUANT_MSE:
        if (!c->bits) c->bits = 4;
        break;
    case KVQ_METHOD_TURBOQUANT_PROD:
        if (!c->bits) c->bits = 3;
        if (!c->proj_dim) c->proj_dim = c->dim;
        break;
    case KVQ_METHOD_TURBOQUANT_RVQ:
        if (!c->bits) c->bits = 1;
        if (!c->residuals) c->residuals = 2;
        break;
    case KVQ_METHOD_QJL:
        c->bits = 1;
        if (!c->proj_dim) c->proj_dim = c->dim;
        break;
    case KVQ_METHOD_POLARQUANT:
        if (!c->bits) c->bits = 4;
        break;
    case KVQ_METHOD_RABITQ:
        if (!c->bits) c->bits = c->split ? 8 : 1;
        if (!c->query_bits) c->query_bits = 32;
        if (!(c->eps0 > 0.0f)) c->eps0 = 1.9f;
        break;
    case KVQ_METHOD_VECINFER:
        if (!c->bits) c->bits = 8;
        if (!c->sub_dim) c->sub_dim = 8;
        break;
    case KVQ_METHOD_SPECTRAL:
        if (!c->bits) c->bits = 2;
        break;
    case KVQ_METHOD_CHANNEL:
        if (!c->bits) c->bits = 4;
        break;
    case KVQ_METHOD_VQ:
        if (!c->bits) c->bits = 2;
        break;
    case KVQ_METHOD_COMM_VQ:
        if (!c->bits) c->bits = 8;
        if (!c->n_codebooks) c->n_codebooks = 4;
        if (!(c->rope_base > 0.0f)) c->rope_base = 10000.0f;
        break;
    default: break;
    }
    /* Fields a method does not take are zero, so equal configs compare equal. */
    if (!(keys & K_RESIDUALS)) c->residuals = 0;
    if (!(keys & K_PROJ_DIM)) c->proj_dim = 0;
    if (!(keys & K_QUERY_BITS)) c->query_bits = 0;
    if (!(keys & K_SPLIT)) c->split = 0;
    if (!(keys & K_NLIST)) c->nlist = 0;
    if (!(keys & K_EPS0)) c->eps0 = 0.0f;
    if (!(keys & K_SUB_DIM)) c->sub_dim = 0;
    if (!(keys & K_N_CODEBOOKS)) c->n_codebooks = 0;
    if (!(keys & K_ROPE_BASE)) c->rope_base = 0.0f;
    if (!(keys & K_ROPE)) c->rope_pairing = 0;
    if (c->method == KVQ_METHOD_CHANNEL && !(c->rope_base > 0.0f)) c->rope_pairing = 0; /* after RoPE: no pairing */
    if (!(keys & K_SEED)) c->seed = 0;
    if (!(keys & K_ARTIFACT)) memset(c->artifact, 0, sizeof c->artifact);
}

int kvqi_config_rotation(const kvq_config *cfg) { return cfg->rotate; }

KVQ_API kvq_status kvq_config_init(kvq_config *cfg, kvq_method method, uint32_t dim) {
    if (!cfg) return KVQ_ERR_INVALID_ARG;
    if (!kvq_method_name(method) || dim == 0) return KVQ_ERR_INVALID_ARG;
    memset(cfg, 0, sizeof *cfg);
    cfg->method = method;
    cfg->dim = dim;
    cfg->rotate = -1;
    cfg->isa = KVQ_ISA_AUTO;
    kvqi_config_resolve(cfg);
    return KVQ_OK;
}

/* ------------------------------------------------------------------ parse */

/* Decimal digits only: no sign, no spaces, no base prefix (0x2), and no leading zero
 * (010 would be 8 to a C reader and 10 to anyone else: refused rather than guessed). */
static int parse_u64(const char *s, uint64_t *out) {
    if (!(*s >= '0' && *s <= '9') || (s[0] == '0' && s[1])) return 0;
    uint64_t v = 0;
    for (; *s; s++) {
        if (!(*s >= '0' && *s <= '9')) return 0;
        uint64_t d = (uint64_t)(*s - '0');
        if (v > (UINT64_MAX - d) / 10) return 0;
        v = v * 10 + d;
    }
    *out = v;
    return 1;
}

static int parse_u32(const char *s, uint32_t *out) {
    uint64_t v;
    if (!parse_u64(s, &v) || v > UINT32_MAX) return 0;
    *out = (uint32_t)v;
    return 1;
}

static const char *const k_rot_names[] = {"none", "hadamard", "dense"};
static const char *const k_isa_names[] = {"auto", "scalar", "avx2", "avx512", "neon"};

typedef struct key_def {
    const char *name;
    unsigned bit;
} key_def;

static const key_def k_keys[] = {
    {"bits", K_BITS},         {"residuals", K_RESIDUALS},   {"rotate", K_ROTATE},
    {"seed", K_SEED},         {"proj_dim", K_PROJ_DIM},     {"m", K_PROJ_DIM},
    {"query_bits", K_QUERY_BITS}, {"split", K_SPLIT},       {"nlist", K_NLIST},
    {"eps0", K_EPS0},         {"sub_dim", K_SUB_DIM},       {"n_codebooks", K_N_CODEBOOKS},
    {"artifact", K_ARTIFACT}, {"isa", K_ISA},
    {"rope_base", K_ROPE_BASE}, {"rope", K_ROPE},
};

static const char *const k_rope_names[] = {"interleaved", "neox"};

static kvq_status set_key(kvq_config *c, unsigned bit, const char *key, const char *val,
                          char *msg, size_t msg_size) {
    uint32_t u = 0;
    switch (bit) {
    case K_BITS:
    case K_RESIDUALS:
    case K_PROJ_DIM:
    case K_QUERY_BITS:
    case K_SUB_DIM:
    case K_N_CODEBOOKS:
        if (!parse_u32(val, &u) || u == 0) {
            kvqi_set_msg(msg, msg_size, "key '%s': '%s' is not a positive decimal integer (digits only, no leading zero)", key, val);
            return KVQ_ERR_PARSE;
        }
        if (bit == K_BITS) c->bits = u;
        else if (bit == K_RESIDUALS) c->residuals = u;
        else if (bit == K_PROJ_DIM) c->proj_dim = u;
        else if (bit == K_QUERY_BITS) c->query_bits = u;
        else if (bit == K_SUB_DIM) c->sub_dim = u;
        else c->n_codebooks = u;
        return KVQ_OK;
    case K_NLIST:
        if (!parse_u32(val, &u)) {
            kvqi_set_msg(msg, msg_size, "key 'nlist': '%s' is not a decimal integer (digits only, no leading zero)", val);
            return KVQ_ERR_PARSE;
        }
        c->nlist = u;
        return KVQ_OK;
    case K_SPLIT:
        if (!parse_u32(val, &u) || u > 1) {
            kvqi_set_msg(msg, msg_size, "key 'split': '%s' is not 0 or 1", val);
            return KVQ_ERR_PARSE;
        }
        c->split = u;
        return KVQ_OK;
    case K_SEED: {
        uint64_t s;
        if (!parse_u64(val, &s)) {
            kvqi_set_msg(msg, msg_size, "key 'seed': '%s' is not a decimal integer (digits only, no leading zero)", val);
            return KVQ_ERR_PARSE;
        }
        c->seed = s;
        return KVQ_OK;
    }
    case K_ROTATE:
        for (int i = 0; i < 3; i++) {
            char digit[2] = {(char)('0' + i), 0};
            if (strcmp(val, k_rot_names[i]) == 0 || strcmp(val, digit) == 0) {
                c->rotate = i;
                return KVQ_OK;
            }
        }
        kvqi_set_msg(msg, msg_size, "key 'rotate': '%s' is not none|hadamard|dense|0|1|2", val);
        return KVQ_ERR_PARSE;
    case K_EPS0:
    case K_ROPE_BASE: {
        char *end;
        errno = 0;
        float f = strtof(val, &end);
        if (!*val || *end || errno || !(f > 0.0f) || !isfinite(f) || strpbrk(val, "xX \t\n\r\f\v")) {
            kvqi_set_msg(msg, msg_size, "key '%s': '%s' is not a positive number", key, val);
            return KVQ_ERR_PARSE;
        }
        if (bit == K_EPS0) c->eps0 = f;
        else c->rope_base = f;
        return KVQ_OK;
    }
    case K_ROPE:
        for (uint32_t i = 0; i < 2; i++)
            if (strcmp(val, k_rope_names[i]) == 0) {
                c->rope_pairing = i;
                return KVQ_OK;
            }
        kvqi_set_msg(msg, msg_size, "key 'rope': '%s' is not interleaved|neox", val);
        return KVQ_ERR_PARSE;
    case K_ARTIFACT:
        if (!*val || strlen(val) >= sizeof c->artifact) {
            kvqi_set_msg(msg, msg_size, "key 'artifact': path empty or longer than %zu bytes",
                         sizeof c->artifact - 1);
            return KVQ_ERR_PARSE;
        }
        strcpy(c->artifact, val);
        return KVQ_OK;
    case K_ISA:
        for (int i = 0; i < 5; i++)
            if (strcmp(val, k_isa_names[i]) == 0) {
                c->isa = (kvq_isa)i;
                return KVQ_OK;
            }
        kvqi_set_msg(msg, msg_size, "key 'isa': '%s' is not auto|scalar|avx2|avx512|neon", val);
        return KVQ_ERR_PARSE;
    }
    return KVQ_ERR_PARSE;
}

kvq_status kvqi_config_set_key(kvq_config *cfg, const char *key, const char *val, char *msg, size_t msg_size) {
    const char *canon = kvq_method_name(cfg->method);
    for (size_t i = 0; i < sizeof k_keys / sizeof k_keys[0]; i++)
        if (strcmp(key, k_keys[i].name) == 0) {
            if (!(method_keys(cfg->method) & k_keys[i].bit)) {
                kvqi_set_msg(msg, msg_size, "%s: key '%s' does not apply to this method", canon ? canon : "config", key);
                return KVQ_ERR_PARSE;
            }
            return set_key(cfg, k_keys[i].bit, key, val, msg, msg_size);
        }
    kvqi_set_msg(msg, msg_size, "%s: unknown key '%s'", canon ? canon : "config", key);
    return KVQ_ERR_PARSE;
}

/* keys whose value is a name or a path, where surrounding spaces are only layout */
static int def_is_string(const char *key) {
    return !strcmp(key, "artifact") || !strcmp(key, "rotate") || !strcmp(key, "rope") || !strcmp(key, "isa");
}

static void trim(char **s) {
    while (isspace((unsigned char)**s)) (*s)++;
    char *e = *s + strlen(*s);
    while (e > *s && isspace((unsigned char)e[-1])) *--e = 0;
}

KVQ_API kvq_status kvq_config_parse(const char *spec, uint32_t dim, kvq_config *cfg,
                                    char *msg, size_t msg_size) {
    if (msg && msg_size) msg[0] = 0;
    if (!spec || !cfg) {
        kvqi_set_msg(msg, msg_size, "config: NULL spec or output");
        return KVQ_ERR_INVALID_ARG;
    }
    char buf[1024];
    if (strlen(spec) >= sizeof buf) {
        kvqi_set_msg(msg, msg_size, "config: spec longer than %zu bytes", sizeof buf - 1);
        return KVQ_ERR_PARSE;
    }
    strcpy(buf, spec);
    char *name = buf, *rest = strchr(buf, ':');
    if (rest) *rest++ = 0;
    trim(&name);
    kvq_method method = KVQ_METHOD_NONE;
    for (size_t i = 0; i < sizeof k_names / sizeof k_names[0]; i++)
        if (strcmp(name, k_names[i].name) == 0) method = k_names[i].method;
    if (method == KVQ_METHOD_NONE && !*name) {
        kvqi_set_msg(msg, msg_size, "config: empty method name (a spec is METHOD[:key=value,...]; "
                     "a cache spec KEYS+VALUES needs both sides)");
        return KVQ_ERR_PARSE;
    }
    if (method == KVQ_METHOD_NONE) {
        kvqi_set_msg(msg, msg_size, "config: unknown method '%s'", name);
        return KVQ_ERR_PARSE;
    }
    kvq_config c;
    memset(&c, 0, sizeof c);
    c.method = method;
    c.dim = dim;
    c.rotate = -1;
    unsigned allowed = method_keys(method), seen = 0;
    const char *canon = kvq_method_name(method);
    while (rest) {
        char *item = rest;
        rest = strchr(rest, ',');
        if (rest) *rest++ = 0;
        trim(&item);
        if (!*item) {
            kvqi_set_msg(msg, msg_size, "%s: empty key in '%s'", canon, spec);
            return KVQ_ERR_PARSE;
        }
        char *eq = strchr(item, '=');
        if (!eq) {
            kvqi_set_msg(msg, msg_size, "%s: key '%s' has no '=value'", canon, item);
            return KVQ_ERR_PARSE;
        }
        *eq = 0;
        char *key = item, *val = eq + 1;
        trim(&key);
        /* a value is taken as written: "bits= 2" is refused, not trimmed */
        if (def_is_string(key)) trim(&val);
        const key_def *def = NULL;
        for (size_t i = 0; i < sizeof k_keys / sizeof k_keys[0]; i++)
            if (strcmp(key, k_keys[i].name) == 0) def = &k_keys[i];
        if (!def) {
            kvqi_set_msg(msg, msg_size, "%s: unknown key '%s'", canon, key);
            return KVQ_ERR_PARSE;
        }
        if (!(allowed & def->bit)) {
            kvqi_set_msg(msg, msg_size, "%s: key '%s' does not apply to this method", canon, key);
            return KVQ_ERR_PARSE;
        }
        if (seen & def->bit) {
            kvqi_set_msg(msg, msg_size, "%s: key '%s' given twice", canon, key);
            return KVQ_ERR_PARSE;
        }
        seen |= def->bit;
        kvq_status st = set_key(&c, def->bit, key, val, msg, msg_size);
        if (st != KVQ_OK) return st;
    }
    kvqi_config_resolve(&c);
    if (dim != 0) {
        kvq_status st = kvq_config_validate(&c, msg, msg_size);
        if (st != KVQ_OK) return st;
    }
    *cfg = c;
    return KVQ_OK;
}

/* ----------------------------------------------------------------- format */

KVQ_API kvq_status kvq_config_format(const kvq_config *cfg, char *buf, size_t buf_size) {
    if (!cfg || !buf || buf_size == 0) return KVQ_ERR_INVALID_ARG;
    const char *name = kvq_method_name(cfg->method);
    if (!name) return KVQ_ERR_INVALID_ARG;
    kvq_config c = *cfg;
    kvqi_config_resolve(&c);
    unsigned keys = method_keys(c.method);
    char out[1200];
    size_t len = 0;
    int first = 1;
#define EMIT(...)                                                                     \
    do {                                                                              \
        int w_ = snprintf(out + len, sizeof out - len, "%s", first ? ":" : ",");      \
        len += (size_t)w_;                                                            \
        w_ = snprintf(out + len, sizeof out - len, __VA_ARGS__);                      \
        if (w_ < 0 || (size_t)w_ >= sizeof out - len) return KVQ_ERR_OVERFLOW;        \
        len += (size_t)w_;                                                            \
        first = 0;                                                                    \
    } while (0)
    len = (size_t)snprintf(out, sizeof out, "%s", name);
    if ((keys & K_BITS)) EMIT("bits=%u", c.bits);
    if ((keys & K_RESIDUALS)) EMIT("residuals=%u", c.residuals);
    if ((keys & K_ROTATE) && c.rotate >= 0 && c.rotate <= 2) EMIT("rotate=%s", k_rot_names[c.rotate]);
    if ((keys & K_SEED)) EMIT("seed=%llu", (unsigned long long)c.seed);
    if ((keys & K_PROJ_DIM) && c.proj_dim) EMIT("proj_dim=%u", c.proj_dim);
    if ((keys & K_QUERY_BITS)) EMIT("query_bits=%u", c.query_bits);
    if ((keys & K_SPLIT)) EMIT("split=%u", c.split);
    if ((keys & K_NLIST)) EMIT("nlist=%u", c.nlist);
    if ((keys & K_EPS0)) EMIT("eps0=%.9g", (double)c.eps0);
    if ((keys & K_SUB_DIM)) EMIT("sub_dim=%u", c.sub_dim);
    if ((keys & K_N_CODEBOOKS)) EMIT("n_codebooks=%u", c.n_codebooks);
    /* (channel keys without a base are coded after RoPE: neither key, which the parser
     * would refuse as rope_base=0) */
    if ((keys & K_ROPE_BASE) && c.rope_base > 0.0f) EMIT("rope_base=%.9g", (double)c.rope_base);
    if ((keys & K_ROPE) && c.rope_base > 0.0f && c.rope_pairing < 2) EMIT("rope=%s", k_rope_names[c.rope_pairing]);
    if ((keys & K_ARTIFACT) && c.artifact[0]) EMIT("artifact=%s", c.artifact);
    if ((keys & K_ISA) && c.isa != KVQ_ISA_AUTO && (unsigned)c.isa < 5)
        EMIT("isa=%s", k_isa_names[c.isa]);
#undef EMIT
    if (len + 1 > buf_size) return KVQ_ERR_OVERFLOW;
    memcpy(buf, out, len + 1);
    return KVQ_OK;
}

/* --------------------------------------------------------------- validate */

KVQ_API kvq_status kvq_config_validate(const kvq_config *cfg, char *msg, size_t msg_size) {
    if (msg && msg_size) msg[0] = 0;
    if (!cfg) return KVQ_ERR_INVALID_ARG;
    const char *name = kvq_method_name(cfg->method);
    if (!name) {
        kvqi_set_msg(msg, msg_size, "config: unknown method %d", (int)cfg->method);
        return KVQ_ERR_INVALID_ARG;
    }
    if (cfg->dim == 0) {
        kvqi_set_msg(msg, msg_size, "%s: dim is 0", name);
        return KVQ_ERR_INVALID_ARG;
    }
    if (cfg->dim > KVQI_QUANT_MAX_DIM) {
        kvqi_set_msg(msg, msg_size, "%s: dim %u above the largest supported (%u)", name,
                     cfg->dim, KVQI_QUANT_MAX_DIM);
        return KVQ_ERR_UNSUPPORTED;
    }
    if ((unsigned)cfg->isa > KVQ_ISA_NEON) {
        kvqi_set_msg(msg, msg_size, "%s: unknown isa %d", name, (int)cfg->isa);
        return KVQ_ERR_INVALID_ARG;
    }
    if (cfg->rotate > 2) {
        kvqi_set_msg(msg, msg_size, "%s: rotate %d is not 0, 1 or 2", name, cfg->rotate);
        return KVQ_ERR_UNSUPPORTED;
    }
    const kvqi_method *m = kvqi_method_find(cfg->method);
    if (!m) {
        kvqi_set_msg(msg, msg_size, "%s: not available in this build yet", name);
        return KVQ_ERR_UNSUPPORTED;
    }
    kvq_config c = *cfg;
    kvqi_config_resolve(&c);
    char why[256] = "";
    kvq_status st = m->validate(&c, why, sizeof why);
    if (st != KVQ_OK) kvqi_set_msg(msg, msg_size, "%s: %s", name, why);
    return st;
}
