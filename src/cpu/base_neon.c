/* base_neon.c - FWHT and canonical-order dot product with NEON, bit-identical to the
 * scalar reference (same butterflies, same 16-lane reduction, no fused multiply-add). */
#include <arm_neon.h>

#include "cpu/cpu.h"

static void fwht_neon(float *x, uint32_t n) {
    if (n < 8) {
        kvqi_fwht_scalar(x, n);
        return;
    }
    /* stages h = 1, 2 in scalar order, h >= 4 on 4-lane vectors */
    for (uint32_t h = 1; h < 4 && h < n; h <<= 1)
        for (uint32_t i = 0; i < n; i += h << 1)
            for (uint32_t j = i; j < i + h; j++) {
                float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
    for (uint32_t h = 4; h < n; h <<= 1)
        for (uint32_t i = 0; i < n; i += h << 1)
            for (uint32_t j = i; j < i + h; j += 4) {
                float32x4_t a = vld1q_f32(x + j), b = vld1q_f32(x + j + h);
                vst1q_f32(x + j, vaddq_f32(a, b));
                vst1q_f32(x + j + h, vsubq_f32(a, b));
            }
}

static float dot_neon(const float *a, const float *b, size_t n) {
    float32x4_t acc[4] = {vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0)};
    size_t i = 0;
    float ta[16], tb[16];
    for (; i < n; i += 16) {
        const float *pa = a + i, *pb = b + i;
        if (i + 16 > n) {
            for (size_t j = 0; j < 16; j++) {
                ta[j] = i + j < n ? a[i + j] : 0.0f;
                tb[j] = i + j < n ? b[i + j] : 0.0f;
            }
            pa = ta;
            pb = tb;
        }
        for (int r = 0; r < 4; r++)
            acc[r] = vaddq_f32(acc[r], vmulq_f32(vld1q_f32(pa + 4 * r), vld1q_f32(pb + 4 * r)));
    }
    float l[16];
    for (int r = 0; r < 4; r++) vst1q_f32(l + 4 * r, acc[r]);
    for (int w = 8; w >= 1; w >>= 1)
        for (int j = 0; j < w; j++) l[j] = l[j] + l[j + w];
    return l[0];
}

const kvqi_base_kernels kvqi_base_neon = {KVQ_ISA_NEON, fwht_neon, dot_neon};
