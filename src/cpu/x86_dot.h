/*
 * x86_dot.h - the integer multiply-adds of the AVX2 kernels, and the names of their
 * AVX-VNNI build.
 */
#ifndef KVQ_X86_DOT_H
#define KVQ_X86_DOT_H

/* The AVX-VNNI build of an AVX2 file (KVQ_AVXVNNI, Makefile): the same code under its own
 * names, each vpmaddwd + vpaddd pair one 256-bit vpdpwssd (KVQI_DP16: the same int32
 * sums, so the same bits), and each vpmaddubsw + vpmaddwd by ones one vpdpbusd where no
 * pair sum can saturate (KVQI_DOT4_U8S8); taken where the CPU has AVX-VNNI (Intel since
 * Alder Lake, AMD since Zen 5), for the entries no AVX-512 kernel replaces. */
#if defined(KVQ_AVXVNNI)
#define kvqi_engine_kernels_avx2 kvqi_engine_kernels_avxvnni
#define kvqi_cache_kernels_fill_avx2 kvqi_cache_kernels_fill_avxvnni
#define kvqi_chan_weights_avx2 kvqi_chan_weights_avxvnni
#define kvqi_chan_dot_avx2 kvqi_chan_dot_avxvnni
#define kvqi_chan_codes_avx2 kvqi_chan_codes_avxvnni
#define kvqi_chan_fit_sums_avx2 kvqi_chan_fit_sums_avxvnni
#define kvqi_chan_prerope_scores_avx2 kvqi_chan_prerope_scores_avxvnni
#define KVQI_DP16(acc, a, b) _mm256_dpwssd_avx_epi32((acc), (a), (b))
#define KVQI_DOT4_U8S8(a, b) _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), (a), (b))
#else
#define KVQI_DP16(acc, a, b) _mm256_add_epi32((acc), _mm256_madd_epi16((a), (b)))
/* int32 sums of four unsigned x signed byte products, for operands whose pair sums stay
 * within int16 (vpmaddubsw saturates them; vpdpbusd does not) */
#define KVQI_DOT4_U8S8(a, b) _mm256_madd_epi16(_mm256_maddubs_epi16((a), (b)), _mm256_set1_epi16(1))
#endif

#endif /* KVQ_X86_DOT_H */
