/*
 * cuda_stub.c - the public CUDA entry points of a build without CUDA (NO_CUDA=1 or no
 * nvcc): each answers KVQ_ERR_NO_DEVICE, so callers fall back to the CPU paths.
 */
#include "kvq.h"

#ifndef KVQ_HAVE_CUDA

#include "core/core.h"

KVQ_API kvq_status kvq_cuda_available(int *n_devices) {
    if (!n_devices) return KVQ_ERR_INVALID_ARG;
    *n_devices = 0;
    return KVQ_ERR_NO_DEVICE;
}

KVQ_API kvq_status kvq_cuda_quantizer_create(const kvq_quantizer *q, kvq_cuda_quantizer **out) {
    KVQI_UNUSED(q);
    if (out) *out = NULL;
    return KVQ_ERR_NO_DEVICE;
}

KVQ_API void kvq_cuda_quantizer_free(kvq_cuda_quantizer *cq) { KVQI_UNUSED(cq); }

KVQ_API kvq_status kvq_cuda_encode(const kvq_cuda_quantizer *cq, kvq_cuda_dtype dtype,
                                   const void *x_dev, size_t n_rows, uint8_t *codes_dev,
                                   void *stream) {
    KVQI_UNUSED(cq);
    KVQI_UNUSED(dtype);
    KVQI_UNUSED(x_dev);
    KVQI_UNUSED(n_rows);
    KVQI_UNUSED(codes_dev);
    KVQI_UNUSED(stream);
    return KVQ_ERR_NO_DEVICE;
}

KVQ_API kvq_status kvq_cuda_attend_workspace(const kvq_cuda_quantizer *key,
                                             const kvq_cuda_quantizer *value,
                                             const kvq_cuda_attn_desc *desc, size_t *bytes) {
    KVQI_UNUSED(key);
    KVQI_UNUSED(value);
    KVQI_UNUSED(desc);
    if (bytes) *bytes = 0;
    return KVQ_ERR_NO_DEVICE;
}

KVQ_API kvq_status kvq_cuda_attend(const kvq_cuda_quantizer *key, const kvq_cuda_quantizer *value,
                                   const kvq_cuda_attn_desc *desc, const void *q_dev,
                                   const uint8_t *k_codes_dev, const uint8_t *v_codes_dev,
                                   const int32_t *seq_lens_dev, void *workspace_dev,
                                   size_t workspace_bytes, float *out_dev, void *stream) {
    KVQI_UNUSED(key);
    KVQI_UNUSED(value);
    KVQI_UNUSED(desc);
    KVQI_UNUSED(q_dev);
    KVQI_UNUSED(k_codes_dev);
    KVQI_UNUSED(v_codes_dev);
    KVQI_UNUSED(seq_lens_dev);
    KVQI_UNUSED(workspace_dev);
    KVQI_UNUSED(workspace_bytes);
    KVQI_UNUSED(out_dev);
    KVQI_UNUSED(stream);
    return KVQ_ERR_NO_DEVICE;
}

KVQ_API kvq_status kvq_cuda_chan_create(const kvq_cache_config *cfg, kvq_cuda_chan **out) {
    KVQI_UNUSED(cfg);
    if (out) *out = NULL;
    return KVQ_ERR_NO_DEVICE;
}

KVQ_API void kvq_cuda_chan_free(kvq_cuda_chan *kc) { KVQI_UNUSED(kc); }

KVQ_API kvq_status kvq_cuda_chan_layout_of(const kvq_cuda_chan *kc, uint32_t batch, uint32_t capacity,
                                           kvq_cuda_chan_layout *out) {
    KVQI_UNUSED(kc);
    KVQI_UNUSED(batch);
    KVQI_UNUSED(capacity);
    KVQI_UNUSED(out);
    return KVQ_ERR_NO_DEVICE;
}

KVQ_API kvq_status kvq_cuda_chan_append_workspace(const kvq_cuda_chan *kc, uint32_t batch, size_t *bytes) {
    KVQI_UNUSED(kc);
    KVQI_UNUSED(batch);
    if (bytes) *bytes = 0;
    return KVQ_ERR_NO_DEVICE;
}

KVQ_API kvq_status kvq_cuda_chan_append(const kvq_cuda_chan *kc, kvq_cuda_dtype dtype, const void *k_dev,
                                        const void *v_dev, uint32_t batch, uint32_t capacity,
                                        const int32_t *positions_dev, void *cache_dev, void *workspace_dev,
                                        size_t workspace_bytes, void *stream) {
    KVQI_UNUSED(kc);
    KVQI_UNUSED(dtype);
    KVQI_UNUSED(k_dev);
    KVQI_UNUSED(v_dev);
    KVQI_UNUSED(batch);
    KVQI_UNUSED(capacity);
    KVQI_UNUSED(positions_dev);
    KVQI_UNUSED(cache_dev);
    KVQI_UNUSED(workspace_dev);
    KVQI_UNUSED(workspace_bytes);
    KVQI_UNUSED(stream);
    return KVQ_ERR_NO_DEVICE;
}

KVQ_API kvq_status kvq_cuda_chan_append_n_workspace(const kvq_cuda_chan *kc, uint32_t batch, uint32_t n,
                                                    size_t *bytes) {
    KVQI_UNUSED(kc);
    KVQI_UNUSED(batch);
    KVQI_UNUSED(n);
    if (bytes) *bytes = 0;
    return KVQ_ERR_NO_DEVICE;
}

KVQ_API kvq_status kvq_cuda_chan_observe_queries(const kvq_cuda_chan *kc, kvq_cuda_dtype dtype, const void *q_dev,
                                                 const uint64_t *strides, uint32_t batch, uint32_t n_q_heads,
                                                 uint32_t n, uint32_t capacity, const int32_t *positions_dev,
                                                 void *cache_dev, void *stream) {
    KVQI_UNUSED(kc);
    KVQI_UNUSED(dtype);
    KVQI_UNUSED(q_dev);
    KVQI_UNUSED(strides);
    KVQI_UNUSED(batch);
    KVQI_UNUSED(n_q_heads);
    KVQI_UNUSED(n);
    KVQI_UNUSED(capacity);
    KVQI_UNUSED(positions_dev);
    KVQI_UNUSED(cache_dev);
    KVQI_UNUSED(stream);
    return KVQ_ERR_NO_DEVICE;
}

KVQ_API kvq_status kvq_cuda_chan_append_n(const kvq_cuda_chan *kc, kvq_cuda_dtype dtype, const void *k_dev,
                                          const void *v_dev, const uint64_t *strides, uint32_t batch, uint32_t n,
                                          uint32_t capacity, const int32_t *positions_dev, void *cache_dev,
                                          void *workspace_dev, size_t workspace_bytes, void *stream) {
    KVQI_UNUSED(kc);
    KVQI_UNUSED(dtype);
    KVQI_UNUSED(k_dev);
    KVQI_UNUSED(v_dev);
    KVQI_UNUSED(strides);
    KVQI_UNUSED(batch);
    KVQI_UNUSED(n);
    KVQI_UNUSED(capacity);
    KVQI_UNUSED(positions_dev);
    KVQI_UNUSED(cache_dev);
    KVQI_UNUSED(workspace_dev);
    KVQI_UNUSED(workspace_bytes);
    KVQI_UNUSED(stream);
    return KVQ_ERR_NO_DEVICE;
}

KVQ_API kvq_status kvq_cuda_chan_attend_workspace(const kvq_cuda_chan *kc, const kvq_cuda_attn_desc *desc,
                                                  size_t *bytes) {
    KVQI_UNUSED(kc);
    KVQI_UNUSED(desc);
    if (bytes) *bytes = 0;
    return KVQ_ERR_NO_DEVICE;
}

KVQ_API kvq_status kvq_cuda_chan_attend(const kvq_cuda_chan *kc, const kvq_cuda_attn_desc *desc,
                                        const void *q_dev, const void *cache_dev, const int32_t *seq_lens_dev,
                                        void *workspace_dev, size_t workspace_bytes, float *out_dev,
                                        void *stream) {
    KVQI_UNUSED(kc);
    KVQI_UNUSED(desc);
    KVQI_UNUSED(q_dev);
    KVQI_UNUSED(cache_dev);
    KVQI_UNUSED(seq_lens_dev);
    KVQI_UNUSED(workspace_dev);
    KVQI_UNUSED(workspace_bytes);
    KVQI_UNUSED(out_dev);
    KVQI_UNUSED(stream);
    return KVQ_ERR_NO_DEVICE;
}

KVQ_API kvq_status kvq_cuda_chan_prefill_workspace(const kvq_cuda_chan *kc, const kvq_cuda_attn_desc *desc,
                                                   uint32_t n_new, size_t *bytes) {
    KVQI_UNUSED(kc);
    KVQI_UNUSED(desc);
    KVQI_UNUSED(n_new);
    if (bytes) *bytes = 0;
    return KVQ_ERR_NO_DEVICE;
}

KVQ_API kvq_status kvq_cuda_chan_prefill(const kvq_cuda_chan *kc, const kvq_cuda_attn_desc *desc, uint32_t n_new,
                                         const void *q_dev, const void *k_new_dev, const void *v_new_dev,
                                         const void *cache_dev, const int32_t *seq_lens_dev, void *workspace_dev,
                                         size_t workspace_bytes, float *out_dev, void *stream) {
    KVQI_UNUSED(kc);
    KVQI_UNUSED(desc);
    KVQI_UNUSED(n_new);
    KVQI_UNUSED(q_dev);
    KVQI_UNUSED(k_new_dev);
    KVQI_UNUSED(v_new_dev);
    KVQI_UNUSED(cache_dev);
    KVQI_UNUSED(seq_lens_dev);
    KVQI_UNUSED(workspace_dev);
    KVQI_UNUSED(workspace_bytes);
    KVQI_UNUSED(out_dev);
    KVQI_UNUSED(stream);
    return KVQ_ERR_NO_DEVICE;
}

KVQ_API kvq_status kvq_cuda_chan_layout_paged(const kvq_cuda_chan *kc, uint32_t batch, kvq_cuda_chan_layout *out) {
    KVQI_UNUSED(kc);
    KVQI_UNUSED(batch);
    KVQI_UNUSED(out);
    return KVQ_ERR_NO_DEVICE;
}

KVQ_API kvq_status kvq_cuda_chan_append_paged(const kvq_cuda_chan *kc, kvq_cuda_dtype dtype, const void *k_dev,
                                              const void *v_dev, uint32_t batch, const kvq_cuda_pages *pages,
                                              const int32_t *positions_dev, void *cache_dev, void *workspace_dev,
                                              size_t workspace_bytes, void *stream) {
    KVQI_UNUSED(kc);
    KVQI_UNUSED(dtype);
    KVQI_UNUSED(k_dev);
    KVQI_UNUSED(v_dev);
    KVQI_UNUSED(batch);
    KVQI_UNUSED(pages);
    KVQI_UNUSED(positions_dev);
    KVQI_UNUSED(cache_dev);
    KVQI_UNUSED(workspace_dev);
    KVQI_UNUSED(workspace_bytes);
    KVQI_UNUSED(stream);
    return KVQ_ERR_NO_DEVICE;
}

KVQ_API kvq_status kvq_cuda_chan_append_n_paged(const kvq_cuda_chan *kc, kvq_cuda_dtype dtype, const void *k_dev,
                                                const void *v_dev, const uint64_t *strides, uint32_t batch,
                                                uint32_t n, const kvq_cuda_pages *pages,
                                                const int32_t *positions_dev, void *cache_dev, void *workspace_dev,
                                                size_t workspace_bytes, void *stream) {
    KVQI_UNUSED(kc);
    KVQI_UNUSED(dtype);
    KVQI_UNUSED(k_dev);
    KVQI_UNUSED(v_dev);
    KVQI_UNUSED(strides);
    KVQI_UNUSED(batch);
    KVQI_UNUSED(n);
    KVQI_UNUSED(pages);
    KVQI_UNUSED(positions_dev);
    KVQI_UNUSED(cache_dev);
    KVQI_UNUSED(workspace_dev);
    KVQI_UNUSED(workspace_bytes);
    KVQI_UNUSED(stream);
    return KVQ_ERR_NO_DEVICE;
}

KVQ_API kvq_status kvq_cuda_chan_attend_paged(const kvq_cuda_chan *kc, const kvq_cuda_attn_desc *desc,
                                              const kvq_cuda_pages *pages, const void *q_dev, const void *cache_dev,
                                              const int32_t *seq_lens_dev, void *workspace_dev,
                                              size_t workspace_bytes, float *out_dev, void *stream) {
    KVQI_UNUSED(kc);
    KVQI_UNUSED(desc);
    KVQI_UNUSED(pages);
    KVQI_UNUSED(q_dev);
    KVQI_UNUSED(cache_dev);
    KVQI_UNUSED(seq_lens_dev);
    KVQI_UNUSED(workspace_dev);
    KVQI_UNUSED(workspace_bytes);
    KVQI_UNUSED(out_dev);
    KVQI_UNUSED(stream);
    return KVQ_ERR_NO_DEVICE;
}

KVQ_API kvq_status kvq_cuda_chan_prefill_paged(const kvq_cuda_chan *kc, const kvq_cuda_attn_desc *desc,
                                               const kvq_cuda_pages *pages, uint32_t n_new, const void *q_dev,
                                               const void *k_new_dev, const void *v_new_dev, const void *cache_dev,
                                               const int32_t *seq_lens_dev, void *workspace_dev,
                                               size_t workspace_bytes, float *out_dev, void *stream) {
    KVQI_UNUSED(kc);
    KVQI_UNUSED(desc);
    KVQI_UNUSED(pages);
    KVQI_UNUSED(n_new);
    KVQI_UNUSED(q_dev);
    KVQI_UNUSED(k_new_dev);
    KVQI_UNUSED(v_new_dev);
    KVQI_UNUSED(cache_dev);
    KVQI_UNUSED(seq_lens_dev);
    KVQI_UNUSED(workspace_dev);
    KVQI_UNUSED(workspace_bytes);
    KVQI_UNUSED(out_dev);
    KVQI_UNUSED(stream);
    return KVQ_ERR_NO_DEVICE;
}

#else

/* ISO C wants at least one declaration in a translation unit. */
typedef int kvqi_cuda_stub_unused;

#endif /* KVQ_HAVE_CUDA */
