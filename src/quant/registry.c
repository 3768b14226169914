/*
 * registry.c - the table of quantization methods by kvq_method. A method is one
 * kvqi_method (quant.h) in its own file.
 */
#include "quant/quant.h"

static const kvqi_method *const k_methods[] = {
    &kvqi_method_fp16,           &kvqi_method_q8_0,           &kvqi_method_q4_0,
    &kvqi_method_turboquant_mse, &kvqi_method_turboquant_prod, &kvqi_method_turboquant_rvq,
    &kvqi_method_qjl,            &kvqi_method_polarquant,     &kvqi_method_rabitq,
    &kvqi_method_vecinfer,       &kvqi_method_spectral,       &kvqi_method_comm_vq,
    &kvqi_method_channel,        &kvqi_method_vq,
};

const kvqi_method *kvqi_method_find(kvq_method method) {
    for (size_t i = 0; i < sizeof k_methods / sizeof k_methods[0]; i++)
        if (k_methods[i]->method == method) return k_methods[i];
    return NULL;
}
