/* status.c - status sentences, version, and the message helper used by parsers. */
#include <stdarg.h>
#include <stdio.h>

#include "core/core.h"
#include "cpu/cpu.h"

KVQ_API const char *kvq_strerror(kvq_status status) {
    switch (status) {
    case KVQ_OK: return "success";
    case KVQ_ERR_INVALID_ARG: return "invalid argument";
    case KVQ_ERR_NOMEM: return "out of memory";
    case KVQ_ERR_OVERFLOW: return "size overflow";
    case KVQ_ERR_IO: return "I/O error";
    case KVQ_ERR_FORMAT: return "truncated, corrupt or foreign file";
    case KVQ_ERR_UNSUPPORTED: return "unsupported parameter or type";
    case KVQ_ERR_PARSE: return "config string could not be parsed";
    case KVQ_ERR_MISMATCH: return "made for another shape or method";
    case KVQ_ERR_STATE: return "call out of order (not fitted or not ready)";
    case KVQ_ERR_NO_DEVICE: return "no CUDA device available";
    case KVQ_ERR_DEVICE: return "CUDA device error";
    case KVQ_ERR_CAPACITY: return "capacity exhausted";
    }
    return "unknown status";
}

KVQ_API const char *kvq_version_string(void) { return KVQ_VERSION_STRING; }

KVQ_API const char *kvq_cpu_isa(void) {
    kvq_isa isa = KVQ_ISA_SCALAR;
    if (kvqi_isa_resolve(KVQ_ISA_AUTO, &isa) != KVQ_OK) isa = KVQ_ISA_SCALAR;
    return kvqi_isa_name(isa);
}

/* The detail of the last failure on this thread (kvq_last_error): per thread, so no
 * state is shared between threads; every message a failing path writes lands here too. */
static _Thread_local char last_error[2048];

void kvqi_set_msg(char *msg, size_t msg_size, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    if (!msg || msg_size == 0) return;
    snprintf(msg, msg_size, "%s", last_error);
}

KVQ_API const char *kvq_last_error(void) { return last_error; }

KVQ_API void kvq_clear_last_error(void) { last_error[0] = 0; }
