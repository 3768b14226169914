/*
 * dequant.c - ggml tensor types: block sizes, row dequantization (the scalar reference)
 * and the dispatch of row-times-vector kernels. Block layouts follow ggml's
 * ggml-common.h (Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q8_1 blocks of 32, K-quants of 256).
 */
#include <math.h>
#include <string.h>

#include "cpu/cpu.h"
#include "engine/engine.h"

static void f32_to_float(const void *row, float *out, size_t n) { memcpy(out, row, n * sizeof(float)); }

static void f16_to_float(const void *row, float *out, size_t n) {
    const uint8_t *p = row;
    for (size_t i = 0; i < n; i++) out[i] = kvqi_eng_h2f(kvqi_eng_rd16(p + 2 * i));
}

static void bf16_to_float(const void *row, float *out, size_t n) {
    const uint8_t *p = row;
    for (size_t i = 0; i < n; i++) {
        union {
            uint32_t u;
            float f;
        } v;
        v.u = (uint32_t)kvqi_eng_rd16(p + 2 * i) << 16;
        out[i] = v.f;
    }
}

static void q4_0_to_float(const void *row, float *out, size_t n) {
    const uint8_t *b = row;
    for (size_t i = 0; i < n / 32; i++, b += 18, out += 32) {
        float d = kvqi_eng_h2f(kvqi_eng_rd16(b));
        const uint8_t *qs = b + 2;
        for (int j = 0; j < 16; j++) {
            out[j] = (float)((qs[j] & 0x0f) - 8) * d;
            out[j + 16] = (float)((qs[j] >> 4) - 8) * d;
        }
    }
}

static void q4_1_to_float(const void *row, float *out, size_t n) {
    const uint8_t *b = row;
    for (size_t i = 0; i < n / 32; i++, b += 20, out += 32) {
        float d = kvqi_eng_h2f(kvqi_eng_rd16(b));
        float m = kvqi_eng_h2f(kvqi_eng_rd16(b + 2));
        const uint8_t *qs = b + 4;
        for (int j = 0; j < 16; j++) {
            out[j] = (float)(qs[j] & 0x0f) * d + m;
            out[j + 16] = (float)(qs[j] >> 4) * d + m;
        }
    }
}

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void q5_0_to_float(const void *row, float *out, size_t n) {
    const uint8_t *b = row;
    for (size_t i = 0; i < n / 32; i++, b += 22, out += 32) {
        float d = kvqi_eng_h2f(kvqi_eng_rd16(b));
        uint32_t qh = rd32(b + 2);
        const uint8_t *qs = b + 6;
        for (int j = 0; j < 16; j++) {
            int h0 = (int)((qh >> j) << 4) & 0x10;
            int h1 = (int)(qh >> (j + 12)) & 0x10;
            out[j] = (float)(((qs[j] & 0x0f) | h0) - 16) * d;
            out[j + 16] = (float)(((qs[j] >> 4) | h1) - 16) * d;
        }
    }
}

static void q5_1_to_float(const void *row, float *out, size_t n) {
    const uint8_t *b = row;
    for (size_t i = 0; i < n / 32; i++, b += 24, out += 32) {
        float d = kvqi_eng_h2f(kvqi_eng_rd16(b));
        float m = kvqi_eng_h2f(kvqi_eng_rd16(b + 2));
        uint32_t qh = rd32(b + 4);
        const uint8_t *qs = b + 8;
        for (int j = 0; j < 16; j++) {
            int h0 = (int)((qh >> j) << 4) & 0x10;
            int h1 = (int)(qh >> (j + 12)) & 0x10;
            out[j] = (float)((qs[j] & 0x0f) | h0) * d + m;
            out[j + 16] = (float)((qs[j] >> 4) | h1) * d + m;
        }
    }
}

static void q8_0_to_float(const void *row, float *out, size_t n) {
    const uint8_t *b = row;
    for (size_t i = 0; i < n / 32; i++, b += 34, out += 32) {
        float d = kvqi_eng_h2f(kvqi_eng_rd16(b));
        const int8_t *qs = (const int8_t *)(b + 2);
        for (int j = 0; j < 32; j++) out[j] = (float)qs[j] * d;
    }
}

static void q8_1_to_float(const void *row, float *out, size_t n) {
    const uint8_t *b = row;
    for (size_t i = 0; i < n / 32; i++, b += 40, out += 32) {
        float d;
        memcpy(&d, b, 4);
        const int8_t *qs = (const int8_t *)(b + 8);
        for (int j = 0; j < 32; j++) out[j] = (float)qs[j] * d;
    }
}

/* 6-bit scale and min j of the 12 packed bytes of a Q4_K / Q5_K block */
static void k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

static void q4_k_to_float(const void *row, float *out, size_t n) {
    const uint8_t *b = row;
    for (size_t i = 0; i < n / 256; i++, b += 144) {
        float d = kvqi_eng_h2f(kvqi_eng_rd16(b));
        float dmin = kvqi_eng_h2f(kvqi_eng_rd16(b + 2));
        const uint8_t *scales = b + 4;
        const uint8_t *q = b + 16;
        int is = 0;
        for (int j = 0; j < 256; j += 64) {
            uint8_t sc, m;
            k_scale_min(is, scales, &sc, &m);
            float d1 = d * sc, m1 = dmin * m;
            k_scale_min(is + 1, scales, &sc, &m);
            float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++) *out++ = d1 * (float)(q[l] & 0x0f) - m1;
            for (int l = 0; l < 32; l++) *out++ = d2 * (float)(q[l] >> 4) - m2;
            q += 32;
            is += 2;
        }
    }
}

static void q5_k_to_float(const void *row, float *out, size_t n) {
    const uint8_t *b = row;
    for (size_t i = 0; i < n / 256; i++, b += 176) {
        float d = kvqi_eng_h2f(kvqi_eng_rd16(b));
        float dmin = kvqi_eng_h2f(kvqi_eng_rd16(b + 2));
        const uint8_t *scales = b + 4;
        const uint8_t *qh = b + 16;
        const uint8_t *ql = b + 48;
        int is = 0;
        uint8_t u1 = 1, u2 = 2;
        for (int j = 0; j < 256; j += 64) {
            uint8_t sc, m;
            k_scale_min(is, scales, &sc, &m);
            float d1 = d * sc, m1 = dmin * m;
            k_scale_min(is + 1, scales, &sc, &m);
            float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++) *out++ = d1 * (float)((ql[l] & 0x0f) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++) *out++ = d2 * (float)((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
            ql += 32;
            is += 2;
            u1 = (uint8_t)(u1 << 2);
            u2 = (uint8_t)(u2 << 2);
        }
    }
}

static void q6_k_to_float(const void *row, float *out, size_t n) {
    const uint8_t *b = row;
    for (size_t i = 0; i < n / 256; i++, b += 210) {
        const uint8_t *ql = b;
        const uint8_t *qh = b + 128;
        const int8_t *sc = (const int8_t *)(b + 192);
        float d = kvqi_eng_h2f(kvqi_eng_rd16(b + 208));
        for (int half = 0; half < 2; half++) {
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                int q1 = (int)((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32;
                int q2 = (int)((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                out[l] = d * sc[is] * (float)q1;
                out[l + 32] = d * sc[is + 2] * (float)q2;
                out[l + 64] = d * sc[is + 4] * (float)q3;
                out[l + 96] = d * sc[is + 6] * (float)q4;
            }
            out += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
    }
}

static void q8_k_to_float(const void *row, float *out, size_t n) {
    const uint8_t *b = row;
    for (size_t i = 0; i < n / 256; i++, b += 292, out += 256) {
        float d;
        memcpy(&d, b, 4);
        const int8_t *qs = (const int8_t *)(b + 4);
        for (int j = 0; j < 256; j++) out[j] = (float)qs[j] * d;
    }
}

static void i8_to_float(const void *row, float *out, size_t n) {
    const int8_t *p = row;
    for (size_t i = 0; i < n; i++) out[i] = p[i];
}
static void i16_to_float(const void *row, float *out, size_t n) {
    const uint8_t *p = row;
    for (size_t i = 0; i < n; i++) out[i] = (int16_t)kvqi_eng_rd16(p + 2 * i);
}
static void i32_to_float(const void *row, float *out, size_t n) {
    const uint8_t *p = row;
    for (size_t i = 0; i < n; i++) out[i] = (float)(int32_t)rd32(p + 4 * i);
}
static void f64_to_float(const void *row, float *out, size_t n) {
    const uint8_t *p = row;
    for (size_t i = 0; i < n; i++) {
        double v;
        memcpy(&v, p + 8 * i, 8);
        out[i] = (float)v;
    }
}

static const kvqi_type_traits type_table[KVQI_T_COUNT] = {
    [0] = {"F32", 1, 4, f32_to_float},
    [1] = {"F16", 1, 2, f16_to_float},
    [2] = {"Q4_0", 32, 18, q4_0_to_float},
    [3] = {"Q4_1", 32, 20, q4_1_to_float},
    [6] = {"Q5_0", 32, 22, q5_0_to_float},
    [7] = {"Q5_1", 32, 24, q5_1_to_float},
    [8] = {"Q8_0", 32, 34, q8_0_to_float},
    [9] = {"Q8_1", 32, 40, q8_1_to_float},
    [10] = {"Q2_K", 256, 84, NULL},
    [11] = {"Q3_K", 256, 110, NULL},
    [12] = {"Q4_K", 256, 144, q4_k_to_float},
    [13] = {"Q5_K", 256, 176, q5_k_to_float},
    [14] = {"Q6_K", 256, 210, q6_k_to_float},
    [15] = {"Q8_K", 256, 292, q8_k_to_float},
    [16] = {"IQ2_XXS", 256, 66, NULL},
    [17] = {"IQ2_XS", 256, 74, NULL},
    [18] = {"IQ3_XXS", 256, 98, NULL},
    [19] = {"IQ1_S", 256, 50, NULL},
    [20] = {"IQ4_NL", 32, 18, NULL},
    [21] = {"IQ3_S", 256, 110, NULL},
    [22] = {"IQ2_S", 256, 82, NULL},
    [23] = {"IQ4_XS", 256, 136, NULL},
    [24] = {"I8", 1, 1, i8_to_float},
    [25] = {"I16", 1, 2, i16_to_float},
    [26] = {"I32", 1, 4, i32_to_float},
    [27] = {"I64", 1, 8, NULL},
    [28] = {"F64", 1, 8, f64_to_float},
    [29] = {"IQ1_M", 256, 56, NULL},
    [30] = {"BF16", 1, 2, bf16_to_float},
    [34] = {"TQ1_0", 256, 54, NULL},
    [35] = {"TQ2_0", 256, 66, NULL},
    [39] = {"MXFP4", 32, 17, NULL},
    [40] = {"NVFP4", 64, 36, NULL},
    [41] = {"Q1_0", 128, 18, NULL},
};

const kvqi_type_traits *kvqi_type(uint32_t type) {
    static const kvqi_type_traits unknown = {NULL, 1, 1, NULL};
    return type < KVQI_T_COUNT && type_table[type].name ? &type_table[type] : &unknown;
}

KVQ_API const char *kvq_tensor_type_name(uint32_t type) { return kvqi_type(type)->name; }

/* ------------------------------------------------ scalar row kernels */

static float dot_f32_scalar(const float *a, const float *b, size_t n) {
    /* four partial sums: the same shape the SIMD kernels reduce in */
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; i++) s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

/* Dequantize one block at a time into a stack buffer and dot it. */
#define ROW_DOT_BLOCKWISE(fn_name, type_id)                                          \
    static float fn_name(const void *row, const float *x, size_t n) {               \
        const kvqi_type_traits *tt = &type_table[type_id];                           \
        float buf[256];                                                              \
        const uint8_t *p = row;                                                      \
        float sum = 0;                                                               \
        for (size_t i = 0; i < n; i += tt->block, p += tt->size) {                   \
            tt->to_float(p, buf, tt->block);                                         \
            sum += dot_f32_scalar(buf, x + i, tt->block);                            \
        }                                                                            \
        return sum;                                                                  \
    }

ROW_DOT_BLOCKWISE(row_dot_q4_0, KVQI_T_Q4_0)
ROW_DOT_BLOCKWISE(row_dot_q4_1, KVQI_T_Q4_1)
ROW_DOT_BLOCKWISE(row_dot_q5_0, KVQI_T_Q5_0)
ROW_DOT_BLOCKWISE(row_dot_q5_1, KVQI_T_Q5_1)
ROW_DOT_BLOCKWISE(row_dot_q8_0, KVQI_T_Q8_0)
ROW_DOT_BLOCKWISE(row_dot_q4_k, KVQI_T_Q4_K)
ROW_DOT_BLOCKWISE(row_dot_q5_k, KVQI_T_Q5_K)
ROW_DOT_BLOCKWISE(row_dot_q6_k, KVQI_T_Q6_K)

static float row_dot_f32(const void *row, const float *x, size_t n) { return dot_f32_scalar(row, x, n); }

static float row_dot_f16(const void *row, const float *x, size_t n) {
    float buf[256];
    const uint8_t *p = row;
    float sum = 0;
    for (size_t i = 0; i < n; i += 256) {
        size_t m = n - i < 256 ? n - i : 256;
        f16_to_float(p + 2 * i, buf, m);
        sum += dot_f32_scalar(buf, x + i, m);
    }
    return sum;
}

static float row_dot_bf16(const void *row, const float *x, size_t n) {
    float buf[256];
    const uint8_t *p = row;
    float sum = 0;
    for (size_t i = 0; i < n; i += 256) {
        size_t m = n - i < 256 ? n - i : 256;
        bf16_to_float(p + 2 * i, buf, m);
        sum += dot_f32_scalar(buf, x + i, m);
    }
    return sum;
}

/* ------------------------------------------------ int8 activation kernels */

static void quantize_q8_scalar(const float *x, size_t n, int8_t *q, float *d, float *s) {
    for (size_t b = 0; b < n / 32; b++, x += 32, q += 32) {
        float amax = 0;
        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[i]));
        float scale = amax / 127.0f, inv = kvqi_q8_act_inv(amax);
        int sum = 0;
        for (int i = 0; i < 32; i++) {
            q[i] = (int8_t)nearbyintf(x[i] * inv); /* round half to even, as the SIMD version */
            sum += q[i];
        }
        d[b] = scale;
        s[b] = scale * (float)sum;
    }
}

static float dot_q8_q4_0_scalar(const void *row, const int8_t *q, const float *d, const float *s, size_t n) {
    const uint8_t *b = row;
    float acc = 0;
    for (size_t i = 0; i < n / 32; i++, b += 18, q += 32) {
        int sum = 0;
        for (int j = 0; j < 16; j++) sum += (b[2 + j] & 0x0f) * q[j] + (b[2 + j] >> 4) * q[j + 16];
        float dw = kvqi_eng_h2f(kvqi_eng_rd16(b));
        acc += dw * (d[i] * (float)sum - 8.0f * s[i]);
    }
    return acc;
}

static float dot_q8_q4_1_scalar(const void *row, const int8_t *q, const float *d, const float *s, size_t n) {
    const uint8_t *b = row;
    float acc = 0;
    for (size_t i = 0; i < n / 32; i++, b += 20, q += 32) {
        int sum = 0;
        for (int j = 0; j < 16; j++) sum += (b[4 + j] & 0x0f) * q[j] + (b[4 + j] >> 4) * q[j + 16];
        acc += kvqi_eng_h2f(kvqi_eng_rd16(b)) * d[i] * (float)sum + kvqi_eng_h2f(kvqi_eng_rd16(b + 2)) * s[i];
    }
    return acc;
}

static float dot_q8_q8_0_scalar(const void *row, const int8_t *q, const float *d, const float *s, size_t n) {
    const uint8_t *b = row;
    float acc = 0;
    (void)s;
    for (size_t i = 0; i < n / 32; i++, b += 34, q += 32) {
        int sum = 0;
        for (int j = 0; j < 32; j++) sum += (int8_t)b[2 + j] * q[j];
        acc += kvqi_eng_h2f(kvqi_eng_rd16(b)) * d[i] * (float)sum;
    }
    return acc;
}

/* ------------------------------------------------ tiled int8 products */

/* Unpacking: w the signed integer of each number, wl one exact float scale per 4
 * numbers (fp16 times a small integer never rounds), wo the block minimum. */
static void fill8(float *wl, float v) {
    for (int j = 0; j < 8; j++) wl[j] = v;
}

static int unpack_q4_0_scalar(const void *row, size_t n, int8_t *w, float *wl, float *wo) {
    const uint8_t *b = row;
    (void)wo;
    for (size_t i = 0; i < n / 32; i++, b += 18, w += 32, wl += 8) {
        for (int j = 0; j < 16; j++) {
            w[j] = (int8_t)((b[2 + j] & 0x0f) - 8);
            w[j + 16] = (int8_t)((b[2 + j] >> 4) - 8);
        }
        fill8(wl, kvqi_eng_h2f(kvqi_eng_rd16(b)));
    }
    return 0;
}

static int unpack_q4_1_scalar(const void *row, size_t n, int8_t *w, float *wl, float *wo) {
    const uint8_t *b = row;
    for (size_t i = 0; i < n / 32; i++, b += 20, w += 32, wl += 8) {
        for (int j = 0; j < 16; j++) {
            w[j] = (int8_t)(b[4 + j] & 0x0f);
            w[j + 16] = (int8_t)(b[4 + j] >> 4);
        }
        fill8(wl, kvqi_eng_h2f(kvqi_eng_rd16(b)));
        wo[4 * i] = kvqi_eng_h2f(kvqi_eng_rd16(b + 2));
    }
    return 1;
}

static int unpack_q5_0_scalar(const void *row, size_t n, int8_t *w, float *wl, float *wo) {
    const uint8_t *b = row;
    (void)wo;
    for (size_t i = 0; i < n / 32; i++, b += 22, w += 32, wl += 8) {
        uint32_t qh = rd32(b + 2);
        for (int j = 0; j < 16; j++) {
            w[j] = (int8_t)(((b[6 + j] & 0x0f) | (((qh >> j) & 1) << 4)) - 16);
            w[j + 16] = (int8_t)(((b[6 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16);
        }
        fill8(wl, kvqi_eng_h2f(kvqi_eng_rd16(b)));
    }
    return 0;
}

static int unpack_q8_0_scalar(const void *row, size_t n, int8_t *w, float *wl, float *wo) {
    const uint8_t *b = row;
    (void)wo;
    for (size_t i = 0; i < n / 32; i++, b += 34, w += 32, wl += 8) {
        memcpy(w, b + 2, 32);
        fill8(wl, kvqi_eng_h2f(kvqi_eng_rd16(b)));
    }
    return 0;
}

static int unpack_q4_k_scalar(const void *row, size_t n, int8_t *w, float *wl, float *wo) {
    const uint8_t *b = row;
    for (size_t i = 0; i < n / 256; i++, b += 144) {
        float d = kvqi_eng_h2f(kvqi_eng_rd16(b)), dmin = kvqi_eng_h2f(kvqi_eng_rd16(b + 2));
        const uint8_t *q = b + 16;
        for (int j = 0; j < 8; j++, w += 32, wl += 8, wo += 4) {
            uint8_t sc, m;
            k_scale_min(j, b + 4, &sc, &m);
            const uint8_t *qj = q + 32 * (j / 2);
            for (int l = 0; l < 32; l++) w[l] = (int8_t)(j & 1 ? qj[l] >> 4 : qj[l] & 0x0f);
            fill8(wl, d * (float)sc);
            *wo = -(dmin * (float)m);
        }
    }
    return 1;
}

static int unpack_q6_k_scalar(const void *row, size_t n, int8_t *w, float *wl, float *wo) {
    const uint8_t *b = row;
    (void)wo;
    for (size_t i = 0; i < n / 256; i++, b += 210) {
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *sc = (const int8_t *)(b + 192);
        float d = kvqi_eng_h2f(kvqi_eng_rd16(b + 208));
        for (int half = 0; half < 2; half++, ql += 64, qh += 32, sc += 8, w += 128) {
            for (int l = 0; l < 32; l++) {
                w[l] = (int8_t)(((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32);
                w[l + 32] = (int8_t)(((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32);
                w[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                w[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
            for (int g = 0; g < 8; g++, wl += 4)
                for (int j = 0; j < 4; j++) wl[j] = d * (float)sc[g];
        }
    }
    return 0;
}

static void gemm_q8_scalar(const kvqi_q8_tile *tl, const kvqi_q8_acts *a, size_t n_tok, float *y, size_t y_stride) {
    size_t n = tl->n, nb = n / 32;
    for (size_t t = 0; t < n_tok; t++) {
        const int8_t *q = a->q + t * a->q_stride;
        const float *d = a->d + t * a->ds_stride, *s = a->s + t * a->ds_stride;
        for (size_t r = 0; r < tl->n_rows; r++) {
            const int8_t *w = tl->w + r * n;
            const float *wl = tl->wl + r * (n / 4);
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (size_t b = 0; b < nb; b++)
                for (int j = 0; j < 8; j++) {
                    const int8_t *wj = w + 32 * b + 4 * j, *qj = q + 32 * b + 4 * j;
                    int32_t isum = wj[0] * qj[0] + wj[1] * qj[1] + wj[2] * qj[2] + wj[3] * qj[3];
                    acc[j] = fmaf(wl[8 * b + j] * d[b], (float)isum, acc[j]);
                }
            float v = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
            if (tl->wo) {
                float off = 0;
                for (size_t b = 0; b < nb; b++) off = fmaf(tl->wo[4 * b + r], s[b], off);
                v += off;
            }
            y[t * y_stride + r] = v;
        }
    }
}

static void gemm4_f32_scalar(const float *w, size_t n, const float *x, size_t n_tok, float *y, size_t y_stride) {
    for (size_t t = 0; t < n_tok; t++)
        for (size_t r = 0; r < 4; r++) y[t * y_stride + r] = dot_f32_scalar(w + r * n, x + t * n, n);
}

static void axpy_f32_scalar(float *y, const float *x, float a, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += a * x[i];
}

static void glu_scalar(float *gate, const float *up, size_t n, int gelu) {
    for (size_t i = 0; i < n; i++) gate[i] = kvqi_glu_one(gate[i], up[i], gelu);
}

void kvqi_engine_kernels_scalar(kvqi_engine_kernels *k) {
    memset(k, 0, sizeof *k);
    k->isa = KVQ_ISA_SCALAR;
    k->dot_f32 = dot_f32_scalar;
    k->axpy_f32 = axpy_f32_scalar;
    k->gemm4_f32 = gemm4_f32_scalar;
    k->quantize_q8 = quantize_q8_scalar;
    k->dot_q8[KVQI_T_Q4_0] = dot_q8_q4_0_scalar;
    k->dot_q8[KVQI_T_Q4_1] = dot_q8_q4_1_scalar;
    k->dot_q8[KVQI_T_Q8_0] = dot_q8_q8_0_scalar;
    k->gemm_q8 = gemm_q8_scalar;
    k->glu = glu_scalar;
    k->unpack_q8[KVQI_T_Q4_0] = unpack_q4_0_scalar;
    k->unpack_q8[KVQI_T_Q4_1] = unpack_q4_1_scalar;
    k->unpack_q8[KVQI_T_Q5_0] = unpack_q5_0_scalar;
    k->unpack_q8[KVQI_T_Q8_0] = unpack_q8_0_scalar;
    k->unpack_q8[KVQI_T_Q4_K] = unpack_q4_k_scalar;
    k->unpack_q8[KVQI_T_Q6_K] = unpack_q6_k_scalar;
    k->row_dot[KVQI_T_F32] = row_dot_f32;
    k->row_dot[KVQI_T_F16] = row_dot_f16;
    k->row_dot[KVQI_T_BF16] = row_dot_bf16;
    k->row_dot[KVQI_T_Q4_0] = row_dot_q4_0;
    k->row_dot[KVQI_T_Q4_1] = row_dot_q4_1;
    k->row_dot[KVQI_T_Q5_0] = row_dot_q5_0;
    k->row_dot[KVQI_T_Q5_1] = row_dot_q5_1;
    k->row_dot[KVQI_T_Q8_0] = row_dot_q8_0;
    k->row_dot[KVQI_T_Q4_K] = row_dot_q4_k;
    k->row_dot[KVQI_T_Q5_K] = row_dot_q5_k;
    k->row_dot[KVQI_T_Q6_K] = row_dot_q6_k;
    for (uint32_t t = 0; t < KVQI_T_COUNT; t++) k->to_float[t] = type_table[t].to_float;
}

/* The table lives in the caller's handle: no global state beyond the CPU detection. */
kvq_status kvqi_engine_kernels_init(kvq_isa requested, kvqi_engine_kernels *k) {
    kvq_isa isa;
    kvq_status st = kvqi_isa_resolve(requested, &isa);
    if (st) return st;
    kvqi_engine_kernels_scalar(k);
#if defined(KVQ_HAVE_X86_SIMD)
    if (isa == KVQ_ISA_AVX2 || isa == KVQ_ISA_AVX512) {
        kvqi_engine_kernels_avx2(k);
#if defined(KVQ_HAVE_AVXVNNI)
        if (kvqi_cpu()->avxvnni) kvqi_engine_kernels_avxvnni(k);
#endif
    }
    /* vpdpbusd needs AVX512_VNNI besides the AVX-512 the rest of the library asks for */
    if (isa == KVQ_ISA_AVX512 && __builtin_cpu_supports("avx512vnni")) kvqi_engine_kernels_avx512(k);
#endif
#if defined(KVQ_HAVE_NEON)
    if (isa == KVQ_ISA_NEON) kvqi_engine_kernels_neon(k);
#endif
    return KVQ_OK;
}

size_t kvqi_engine_kernel_sets(kvqi_engine_kernels *out, size_t max) {
    size_t n = 0;
    for (int isa = KVQ_ISA_SCALAR; isa <= KVQ_ISA_NEON; isa++) {
        if (!kvq_isa_available((kvq_isa)isa)) continue;
        if (n < max && kvqi_engine_kernels_init((kvq_isa)isa, &out[n]) != KVQ_OK) continue;
        n++;
    }
#if defined(KVQ_HAVE_AVXVNNI)
    if (kvq_isa_available(KVQ_ISA_AVX2) && kvqi_cpu()->avxvnni) {
        if (n < max) {
            kvqi_engine_kernels_scalar(&out[n]);
            kvqi_engine_kernels_avx2(&out[n]);
        }
        n++;
    }
#endif
    return n;
}
