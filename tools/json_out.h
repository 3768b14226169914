/* json_out.h - the --json output of generate, perplexity and index search: one JSON
 * object on stdout, written by hand. Strings are escaped per RFC 8259 (quotes,
 * backslashes, control characters as \u00XX; other bytes pass through as UTF-8);
 * numbers that are not finite are written as null. */
#ifndef KVQ_CLI_JSON_OUT_H
#define KVQ_CLI_JSON_OUT_H

#include <stddef.h>
#include <stdio.h>

void kvq_json_string(FILE *f, const char *s);
void kvq_json_string_n(FILE *f, const char *s, size_t n);
/* A double as %.17g (round-trips), or null if it is NaN or infinite. */
void kvq_json_number(FILE *f, double v);

#endif
