/* json_out.c - JSON strings and numbers for the CLI's --json output. */
#include "json_out.h"

#include <math.h>

/* Length of the well-formed UTF-8 sequence at s (shortest form, no surrogates, at
 * most U+10FFFF), or 0. */
static size_t utf8_len(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t len = u[0] >= 0xf0 ? 4 : u[0] >= 0xe0 ? 3 : u[0] >= 0xc2 ? 2 : 0;
    if (!len || len > n || u[0] > 0xf4) return 0;
    for (size_t k = 1; k < len; k++)
        if ((u[k] & 0xc0) != 0x80) return 0;
    if (len == 3 && ((u[0] == 0xe0 && u[1] < 0xa0) || (u[0] == 0xed && u[1] >= 0xa0))) return 0;
    if (len == 4 && ((u[0] == 0xf0 && u[1] < 0x90) || (u[0] == 0xf4 && u[1] >= 0x90))) return 0;
    return len;
}

void kvq_json_string_n(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            fputc('\\', f);
            fputc(c, f);
        } else if (c == '\n') {
            fputs("\\n", f);
        } else if (c == '\t') {
            fputs("\\t", f);
        } else if (c == '\r') {
            fputs("\\r", f);
        } else if (c < 0x20 || c == 0x7f) {
            fprintf(f, "\\u%04x", c);
        } else if (c < 0x80) {
            fputc(c, f);
        } else {
            size_t len = utf8_len(s + i, n - i);
            if (len) {
                fwrite(s + i, 1, len, f);
                i += len - 1;
            } else {
                fputs("\\ufffd", f); /* not UTF-8 (a token cut inside a character) */
            }
        }
    }
    fputc('"', f);
}

void kvq_json_string(FILE *f, const char *s) {
    size_t n = 0;
    while (s && s[n]) n++;
    kvq_json_string_n(f, s ? s : "", n);
}

void kvq_json_number(FILE *f, double v) {
    if (isfinite(v)) fprintf(f, "%.17g", v);
    else fputs("null", f);
}
