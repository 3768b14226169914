/*
 * paged.cu - appending tokens to a paged (or contiguous) code pool: one encode launch
 * into a scratch row per (sequence, kv head), then one scatter launch that copies each
 * code to its page slot, so the bytes are exactly kvq_cuda_encode's (and the CPU's).
 */
#include <cuda_runtime.h>
#include <stdint.h>

#include "cuda/cuda_internal.h"

/* One warp per (sequence, kv head) row: copy its code to the page slot of positions[b]. */
__global__ void __launch_bounds__(128) scatter_kernel(const uint8_t *scratch, int n_rows, int n_kv_heads,
                                                      int code_size, const int32_t *positions,
                                                      const int32_t *page_table, int page_size,
                                                      int max_pages, uint8_t *pages) {
    const int row = blockIdx.x * 4 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= n_rows) return;
    const int b = row / n_kv_heads, h = row % n_kv_heads;
    const int pos = positions[b];
    if (pos < 0 || (long long)pos >= (long long)page_size * max_pages) return;
    long long page = b, slot = pos;
    if (page_table) {
        page = page_table[(size_t)b * max_pages + pos / page_size];
        slot = pos % page_size;
        if (page < 0) return;
    }
    uint8_t *dst = pages + (size_t)((page * n_kv_heads + h) * page_size + slot) * code_size;
    const uint8_t *src = scratch + (size_t)row * code_size;
    for (int i = lane; i < code_size; i += 32) dst[i] = src[i];
}

extern "C" KVQ_API kvq_status kvq_cuda_append(const kvq_cuda_quantizer *cq, kvq_cuda_dtype dtype,
                                              const void *x_dev, uint32_t batch, uint32_t n_kv_heads,
                                              const int32_t *positions_dev,
                                              const int32_t *page_table_dev, uint32_t page_size,
                                              uint32_t max_pages, uint8_t *pages_dev,
                                              void *scratch_dev, size_t scratch_bytes, void *stream) {
    if (!cq || !x_dev || !positions_dev || !pages_dev || !scratch_dev) return KVQ_ERR_INVALID_ARG;
    if (batch == 0 || n_kv_heads == 0 || page_size == 0 || max_pages == 0) return KVQ_ERR_INVALID_ARG;
    if (!page_table_dev && max_pages != 1) return KVQ_ERR_INVALID_ARG;
    uint64_t rows = (uint64_t)batch * n_kv_heads;
    if (rows > (uint64_t)INT32_MAX / 4 || page_size > (uint32_t)INT32_MAX || max_pages > (uint32_t)INT32_MAX)
        return KVQ_ERR_UNSUPPORTED;
    size_t cs = (size_t)cq->p.code_size;
    if (rows > SIZE_MAX / cs) return KVQ_ERR_OVERFLOW;
    if (scratch_bytes < rows * cs) return KVQ_ERR_CAPACITY;
    kvq_status st = kvq_cuda_encode(cq, dtype, x_dev, (size_t)rows, (uint8_t *)scratch_dev, stream);
    if (st != KVQ_OK) return st;
    unsigned blocks = (unsigned)((rows + 3) / 4);
    scatter_kernel<<<blocks, 128, 0, (cudaStream_t)stream>>>(
        (const uint8_t *)scratch_dev, (int)rows, (int)n_kv_heads, (int)cs, positions_dev, page_table_dev,
        (int)page_size, (int)max_pages, pages_dev);
    return kvqc_status(cudaGetLastError());
}
