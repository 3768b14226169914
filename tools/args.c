/* args.c - checked option values for every kvq command: one parser for integers and
 * floats with a range and one check for input files, each failure one clear line. */
#include "args.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* digits only, at least one; the value, 0 on overflow of UINT64_MAX */
static int parse_digits(const char *s, uint64_t *out) {
    uint64_t v = 0;
    if (!is_digit(*s)) return 0;
    for (; *s; s++) {
        if (!is_digit(*s)) return 0;
        uint64_t d = (uint64_t)(*s - '0');
        if (v > (UINT64_MAX - d) / 10) return 0;
        v = v * 10 + d;
    }
    *out = v;
    return 1;
}

static int bad_integer(const char *cmd, const char *opt, const char *s, const char *lo, const char *hi) {
    fprintf(stderr, "kvq %s: %s: '%s' is not an integer in [%s, %s]\n", cmd, opt, s, lo, hi);
    return 1;
}

int kvq_arg_long(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out) {
    char los[32], his[32];
    snprintf(los, sizeof los, "%ld", lo);
    snprintf(his, sizeof his, "%ld", hi);
    if (!s) return bad_integer(cmd, opt, "", los, his);
    int neg = *s == '-';
    const char *d = s + (*s == '-' || *s == '+');
    uint64_t mag;
    if (!parse_digits(d, &mag) || mag > (uint64_t)LONG_MAX + (neg ? 1u : 0u))
        return bad_integer(cmd, opt, s, los, his);
    long v = neg ? (mag == (uint64_t)LONG_MAX + 1u ? LONG_MIN : -(long)mag) : (long)mag;
    if (v < lo || v > hi) return bad_integer(cmd, opt, s, los, his);
    *out = v;
    return 0;
}

int kvq_arg_u64(const char *cmd, const char *opt, const char *s, uint64_t lo, uint64_t hi, uint64_t *out) {
    char los[32], his[32];
    snprintf(los, sizeof los, "%llu", (unsigned long long)lo);
    snprintf(his, sizeof his, "%llu", (unsigned long long)hi);
    uint64_t v;
    if (!s || !parse_digits(s + (*s == '+'), &v) || v < lo || v > hi)
        return bad_integer(cmd, opt, s ? s : "", los, his);
    *out = v;
    return 0;
}

int kvq_arg_u32(const char *cmd, const char *opt, const char *s, uint32_t lo, uint32_t hi, uint32_t *out) {
    uint64_t v;
    if (kvq_arg_u64(cmd, opt, s, lo, hi, &v)) return 1;
    *out = (uint32_t)v;
    return 0;
}

int kvq_arg_double(const char *cmd, const char *opt, const char *s, double lo, double hi, double *out) {
    char *end = NULL;
    double v = 0;
    int ok = s && *s && !strpbrk(s, "xX \t\n\r\f\v");
    if (ok) {
        errno = 0;
        v = strtod(s, &end);
        /* ERANGE on underflow is fine (a tiny number is a number); overflow gives inf */
        ok = end != s && !*end && !isnan(v) && v >= lo && v <= hi;
    }
    if (!ok) {
        fprintf(stderr, "kvq %s: %s: '%s' is not a number in [%g, %g]\n", cmd, opt, s ? s : "", lo, hi);
        return 1;
    }
    *out = v;
    return 0;
}

int kvq_arg_regular_file(const char *cmd, const char *path) {
    struct stat sb;
    if (stat(path, &sb) != 0) {
        fprintf(stderr, "kvq %s: %s: %s\n", cmd, path, strerror(errno));
        return 1;
    }
    if (!S_ISREG(sb.st_mode)) {
        fprintf(stderr, "kvq %s: %s: %s, not a regular file\n", cmd, path,
                S_ISDIR(sb.st_mode) ? "is a directory" : "is a special file");
        return 1;
    }
    return 0;
}

int kvq_arg_output_file(const char *cmd, const char *path) {
    struct stat sb;
    if (stat(path, &sb) != 0 || S_ISREG(sb.st_mode)) return 0; /* a missing directory shows at the write */
    fprintf(stderr, "kvq %s: %s: %s, not a file to write\n", cmd, path,
            S_ISDIR(sb.st_mode) ? "is a directory" : "is a special file");
    return 1;
}

char *kvq_cli_read_text(const char *cmd, const char *path, size_t *len) {
    if (kvq_arg_regular_file(cmd, path)) return NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "kvq %s: %s: %s\n", cmd, path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        char *nb = cap > ((size_t)1 << 30) ? NULL : realloc(buf, 2 * cap + 1);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    int err = ferror(f);
    fclose(f);
    if (!buf || err) {
        fprintf(stderr, "kvq %s: %s: %s\n", cmd, path, err ? "read error" : "out of memory (or over 1 GiB)");
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    for (size_t i = 0; i < n; i++)
        if (buf[i] == 0) buf[i] = ' '; /* a NUL byte would end the text early */
    if (len) *len = n;
    return buf;
}
