/*
 * attend_mma.cu - tensor-core decode attention for 1-bit keys and 2/4-bit values.
 */
#include "cuda/attend.h"

int kvqc_mma_supports(const kvqc_params *kp, const kvqc_params *vp, int group, int capacity) {
    (void)kp;
    (void)vp;
    (void)group;
    (void)capacity;
    return 0;
}

cudaError_t kvqc_launch_mma(const kvqc_attn_args *a, dim3 grid, cudaStream_t s) {
    (void)a;
    (void)grid;
    (void)s;
    return cudaErrorNotSupported;
}
