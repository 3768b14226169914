/*
 * cuda_stub_serving.c - the paged-KV, prefill and append entry points of a build
 * without CUDA: each answers KVQ_ERR_NO_DEVICE (as cuda_stub.c does for the rest).
 */
#include "kvq.h"

#ifndef KVQ_HAVE_CUDA

#include "core/core.h"

KVQ_API kvq_status kvq_cuda_attend_paged_workspace(const kvq_cuda_quantizer *key,
                                                   const kvq_cuda_quantizer *value,
                                                   const kvq_cuda_attn_desc *desc,
                                                   const kvq_cuda_pages *pages, uint32_t n_new,
                                                   size_t *bytes) {
    KVQI_UNUSED(key);
    KVQI_UNUSED(value);
    KVQI_UNUSED(desc);
    KVQI_UNUSED(pages);
    KVQI_UNUSED(n_new);
    if (bytes) *bytes = 0;
    return KVQ_ERR_NO_DEVICE;
}

KVQ_API kvq_status kvq_cuda_attend_paged(const kvq_cuda_quantizer *key,
                                         const kvq_cuda_quantizer *value,
                                         const kvq_cuda_attn_desc *desc,
                                         const kvq_cuda_pages *pages, const void *q_dev,
                                         const int32_t *seq_lens_dev, void *workspace_dev,
                                         size_t workspace_bytes, float *out_dev, void *stream) {
    KVQI_UNUSED(key);
    KVQI_UNUSED(value);
    KVQI_UNUSED(desc);
    KVQI_UNUSED(pages);
    KVQI_UNUSED(q_dev);
    KVQI_UNUSED(seq_lens_dev);
    KVQI_UNUSED(workspace_dev);
    KVQI_UNUSED(workspace_bytes);
    KVQI_UNUSED(out_dev);
    KVQI_UNUSED(stream);
    return KVQ_ERR_NO_DEVICE;
}

KVQ_API kvq_status kvq_cuda_prefill(const kvq_cuda_quantizer *key, const kvq_cuda_quantizer *value,
                                    const kvq_cuda_attn_desc *desc, const kvq_cuda_pages *pages,
                                    uint32_t n_new, const void *q_dev, const void *k_new_dev,
                                    const void *v_new_dev, const int32_t *seq_lens_dev,
                                    void *workspace_dev, size_t workspace_bytes, float *out_dev,
                                    void *stream) {
    KVQI_UNUSED(key);
    KVQI_UNUSED(value);
    KVQI_UNUSED(desc);
    KVQI_UNUSED(pages);
    KVQI_UNUSED(n_new);
    KVQI_UNUSED(q_dev);
    KVQI_UNUSED(k_new_dev);
    KVQI_UNUSED(v_new_dev);
    KVQI_UNUSED(seq_lens_dev);
    KVQI_UNUSED(workspace_dev);
    KVQI_UNUSED(workspace_bytes);
    KVQI_UNUSED(out_dev);
    KVQI_UNUSED(stream);
    return KVQ_ERR_NO_DEVICE;
}

KVQ_API kvq_status kvq_cuda_append(const kvq_cuda_quantizer *cq, kvq_cuda_dtype dtype,
                                   const void *x_dev, uint32_t batch, uint32_t n_kv_heads,
                                   const int32_t *positions_dev, const int32_t *page_table_dev,
                                   uint32_t page_size, uint32_t max_pages, uint8_t *pages_dev,
                                   void *scratch_dev, size_t scratch_bytes, void *stream) {
    KVQI_UNUSED(cq);
    KVQI_UNUSED(dtype);
    KVQI_UNUSED(x_dev);
    KVQI_UNUSED(batch);
    KVQI_UNUSED(n_kv_heads);
    KVQI_UNUSED(positions_dev);
    KVQI_UNUSED(page_table_dev);
    KVQI_UNUSED(page_size);
    KVQI_UNUSED(max_pages);
    KVQI_UNUSED(pages_dev);
    KVQI_UNUSED(scratch_dev);
    KVQI_UNUSED(scratch_bytes);
    KVQI_UNUSED(stream);
    return KVQ_ERR_NO_DEVICE;
}

#else

/* ISO C wants at least one declaration in a translation unit. */
typedef int kvqi_cuda_stub_serving_unused;

#endif /* KVQ_HAVE_CUDA */
