/*
 * cuda_internal.h - what the CUDA files share: a quantizer's parameters as the kernels
 * see them (passed by value), the host handle, and status mapping. Formats follow the
 * CPU quantizers (src/quant) byte for byte; the rotation is TurboQuant's randomized
 * Hadamard transform (arXiv 2504.19874) restricted to one power-of-two block.
 */
#ifndef KVQ_CUDA_INTERNAL_H
#define KVQ_CUDA_INTERNAL_H

#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "kvq.h"
}

/* How a code decodes inside the kernels. */
enum {
    KVQC_FP16 = 0,
    KVQC_Q8_0 = 1,
    KVQC_Q4_0 = 2,
    KVQC_MSE = 3,    /* norm * centroid[idx] */
    KVQC_RVQ = 4,    /* (gauss[idx0] + sum_k s_k laplace[idx_k]) * norm / sqrt(d) */
    KVQC_RABITQ = 5, /* 1-bit: +-norm/sqrt(d) (/cos when scoring) */
    KVQC_QJL = 6     /* +-norm sqrt(pi/2)/m in the projected space */
};

#define KVQC_MAX_DIM 1024

typedef struct kvqc_params {
    int kind;
    int dim;
    int bits;
    int residuals;
    int code_size;
    int rotate;       /* 0 none, 1 Hadamard (one block: dim is a power of two) */
    int sign_path;    /* 1-bit codes from the unnormalised transform (CPU's fused path) */
    int m;            /* qjl projections */
    float had_scale;  /* (float)(1/sqrt(dim)) */
    float sqrt_d;     /* sqrtf((float)dim) */
    float inv_sqrt_d; /* 1.0f / sqrtf((float)dim) */
    float inv_d;      /* 1.0f / (float)dim */
    float qjl_c0;     /* sqrt(pi/2) / m */
    uint32_t sign_bits[KVQC_MAX_DIM / 32]; /* bit i set: sign1[i] = -1 */
    float thr[255];   /* mse: Beta thresholds; rvq: Gaussian */
    float cen[256];
    float thr2[15];   /* rvq: Laplacian stages */
    float cen2[16];
    const float *proj_t; /* qjl: S transposed, [d][m], device */
    const float *proj;   /* qjl: S, [m][d], device */
} kvqc_params;

struct kvq_cuda_quantizer {
    kvq_config cfg;
    kvqc_params p;
    kvqc_params *p_dev; /* the same, in device memory (attention kernels read it) */
    float *proj_dev;   /* qjl S and S^T, one allocation */
    int device;
    int n_sm;
    size_t smem_optin;
};

static inline kvq_status kvqc_status(cudaError_t e) {
    if (e == cudaSuccess) return KVQ_OK;
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) return KVQ_ERR_NO_DEVICE;
    if (e == cudaErrorMemoryAllocation) return KVQ_ERR_NOMEM;
    return KVQ_ERR_DEVICE;
}

#define KVQC_FULL 0xffffffffu

/* Thread-per-vector encoders (encode_rows.cu) for head_dim 128: returns 1 and sets *err
 * when it took the launch, 0 when this quantizer or input alignment is not its case. */
int kvqc_encode_rows(const kvqc_params *p, int dtype, const void *x, size_t n_rows, uint8_t *codes,
                     cudaStream_t s, int n_sm, cudaError_t *err);

/* Prefill's exact part (attend.cu): query row z = b * n_new + i (n_rows of them, each of
 * n_q_heads heads) over the new tokens 0..i of sequence b, exactly (q, k_new, v_new in
 * dtype), its sums moved to vp's rotated domain and stored as partial slot `slot` of
 * n_slots ([row][head][n_slots][D + 2]: acc, max in log2 units, sum). D: 64, 128, 256. */
cudaError_t kvqc_launch_exact(const kvqc_params *vp, int D, int dtype, const void *q, const void *k_new,
                              const void *v_new, int n_new, int n_q_heads, int n_kv_heads, int group,
                              float scale, float *partial, int n_slots, int slot, unsigned n_rows,
                              cudaStream_t s);

#endif /* KVQ_CUDA_INTERNAL_H */
