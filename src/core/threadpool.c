/* threadpool.c - a fixed pool of persistent workers for kvqi_parallel_for. A call
 * publishes (fn, ctx, n_tasks) and bumps a generation counter; workers spin briefly on
 * it, then sleep on a condition variable, so a run of back-to-back calls (one per token
 * per layer) costs a few microseconds. Tasks are claimed from an atomic counter. The
 * caller is thread 0 and works too; kvq_threadpool_size counts it. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/core.h"

#define KVQI_POOL_MAX_THREADS 1024
#define KVQI_POOL_SPIN 4000

struct kvq_threadpool {
    unsigned n_threads; /* caller included */
    pthread_t *workers; /* n_threads - 1 */
    pthread_mutex_t mu;
    pthread_cond_t wake;
    pthread_cond_t done;
    atomic_uint_fast64_t generation;
    atomic_size_t next_task;
    atomic_uint active; /* workers that have not finished the current generation */
    atomic_int stop;
    /* the job: written before `generation` is released, read after it is acquired */
    kvqi_task_fn fn;
    void *ctx;
    size_t n_tasks;
    /* kvqi_threadpool_buffers */
    float **bufs;
    size_t buf_bytes;
    float *shared;
    size_t shared_bytes;
};

typedef struct worker_arg {
    kvq_threadpool *pool;
    unsigned id;
} worker_arg;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

static void run_tasks(kvq_threadpool *p, unsigned id) {
    const size_t n = p->n_tasks;
    kvqi_task_fn fn = p->fn;
    void *ctx = p->ctx;
    for (;;) {
        const size_t t = atomic_fetch_add_explicit(&p->next_task, 1, memory_order_relaxed);
        if (t >= n) break;
        fn(ctx, t, id);
    }
}

static void *worker_main(void *arg) {
    kvq_threadpool *p = ((worker_arg *)arg)->pool;
    const unsigned id = ((worker_arg *)arg)->id;
    free(arg);
    uint_fast64_t seen = 0;
    for (;;) {
        uint_fast64_t g = atomic_load_explicit(&p->generation, memory_order_acquire);
        for (int spin = 0; g == seen && spin < KVQI_POOL_SPIN; spin++) {
            cpu_relax();
            g = atomic_load_explicit(&p->generation, memory_order_acquire);
        }
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            while ((g = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen &&
                   !atomic_load(&p->stop))
                pthread_cond_wait(&p->wake, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) return NULL;
        seen = g;
        run_tasks(p, id);
        if (atomic_fetch_sub_explicit(&p->active, 1, memory_order_acq_rel) == 1) {
            /* the caller may be asleep on `done`; it checks `active` under the mutex */
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

static void stop_workers(kvq_threadpool *p, unsigned started) {
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (unsigned i = 0; i < started; i++) pthread_join(p->workers[i], NULL);
}

KVQ_API kvq_status kvq_threadpool_create(unsigned n_threads, kvq_threadpool **out) {
    if (!out) return KVQ_ERR_INVALID_ARG;
    *out = NULL;
    if (n_threads == 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = online > 0 ? (unsigned)KVQI_MIN(online, (long)KVQI_POOL_MAX_THREADS) : 1;
    }
    if (n_threads > KVQI_POOL_MAX_THREADS) return KVQ_ERR_INVALID_ARG;
    kvq_threadpool *p = calloc(1, sizeof *p);
    if (!p) return KVQ_ERR_NOMEM;
    p->n_threads = n_threads;
    atomic_init(&p->generation, 0);
    atomic_init(&p->next_task, 0);
    atomic_init(&p->active, 0);
    atomic_init(&p->stop, 0);
    if (n_threads > 1) {
        p->workers = calloc(n_threads - 1, sizeof *p->workers);
        if (!p->workers) {
            free(p);
            return KVQ_ERR_NOMEM;
        }
    }
    if (pthread_mutex_init(&p->mu, NULL) != 0) goto fail_mu;
    if (pthread_cond_init(&p->wake, NULL) != 0) goto fail_wake;
    if (pthread_cond_init(&p->done, NULL) != 0) goto fail_done;
    for (unsigned i = 0; i + 1 < n_threads; i++) {
        worker_arg *a = malloc(sizeof *a);
        if (a) {
            a->pool = p;
            a->id = i + 1;
        }
        if (!a || pthread_create(&p->workers[i], NULL, worker_main, a) != 0) {
            free(a);
            stop_workers(p, i);
            goto fail_threads;
        }
    }
    *out = p;
    return KVQ_OK;
fail_threads:
    pthread_cond_destroy(&p->done);
fail_done:
    pthread_cond_destroy(&p->wake);
fail_wake:
    pthread_mutex_destroy(&p->mu);
fail_mu:
    free(p->workers);
    free(p);
    return KVQ_ERR_NOMEM;
}

static void free_buffers(kvq_threadpool *p) {
    if (p->bufs)
        for (unsigned i = 0; i < p->n_threads; i++) kvqi_free(p->bufs[i]);
    kvqi_free(p->bufs);
    p->bufs = NULL;
    p->buf_bytes = 0;
}

kvq_status kvqi_threadpool_buffers(kvq_threadpool *p, size_t per_thread_bytes, size_t shared_bytes,
                                   float ***per_thread, float **shared) {
    if (!p) return KVQ_ERR_INVALID_ARG;
    if (per_thread_bytes > p->buf_bytes || !p->bufs) {
        free_buffers(p);
        p->bufs = kvqi_calloc_array(p->n_threads, sizeof *p->bufs);
        if (!p->bufs) return KVQ_ERR_NOMEM;
        for (unsigned i = 0; i < p->n_threads; i++)
            if (!(p->bufs[i] = kvqi_alloc_array(per_thread_bytes ? per_thread_bytes : 1, 1))) {
                free_buffers(p);
                return KVQ_ERR_NOMEM;
            }
        p->buf_bytes = per_thread_bytes;
    }
    if (shared_bytes > p->shared_bytes) {
        float *b = kvqi_alloc_array(shared_bytes, 1);
        if (!b) return KVQ_ERR_NOMEM;
        kvqi_free(p->shared);
        p->shared = b;
        p->shared_bytes = shared_bytes;
    }
    if (per_thread) *per_thread = p->bufs;
    if (shared) *shared = p->shared;
    return KVQ_OK;
}

size_t kvqi_threadpool_buffer_bytes(const kvq_threadpool *p) {
    return p ? (size_t)p->n_threads * p->buf_bytes + p->shared_bytes : 0;
}

KVQ_API void kvq_threadpool_free(kvq_threadpool *pool) {
    if (!pool) return;
    free_buffers(pool);
    kvqi_free(pool->shared);
    stop_workers(pool, pool->n_threads - 1);
    pthread_cond_destroy(&pool->done);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->mu);
    free(pool->workers);
    free(pool);
}

KVQ_API unsigned kvq_threadpool_size(const kvq_threadpool *pool) {
    return pool ? pool->n_threads : 1;
}

void kvqi_parallel_for(kvq_threadpool *pool, size_t n_tasks, kvqi_task_fn fn, void *ctx) {
    if (n_tasks == 0 || !fn) return;
    if (!pool || pool->n_threads <= 1 || n_tasks == 1) {
        for (size_t t = 0; t < n_tasks; t++) fn(ctx, t, 0);
        return;
    }
    pool->fn = fn;
    pool->ctx = ctx;
    pool->n_tasks = n_tasks;
    atomic_store_explicit(&pool->next_task, 0, memory_order_relaxed);
    atomic_store_explicit(&pool->active, pool->n_threads - 1, memory_order_relaxed);
    /* release: workers that see the new generation see the job above */
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    pthread_mutex_lock(&pool->mu);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mu);

    run_tasks(pool, 0);

    for (int spin = 0; spin < KVQI_POOL_SPIN; spin++) {
        if (atomic_load_explicit(&pool->active, memory_order_acquire) == 0) return;
        cpu_relax();
    }
    pthread_mutex_lock(&pool->mu);
    while (atomic_load_explicit(&pool->active, memory_order_acquire) != 0)
        pthread_cond_wait(&pool->done, &pool->mu);
    pthread_mutex_unlock(&pool->mu);
}
