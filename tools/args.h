/* args.h - checked parsing of the CLI's option values, shared by every command: numbers
 * in a stated range (decimal, no trailing junk, no negative wrapped into unsigned,
 * finite floats), and input files that must be regular files. Each check that fails
 * prints one line, "kvq <cmd>: <opt>: '<value>' is not an integer in [lo, hi]", and
 * returns 1; success returns 0. Public API only. */
#ifndef KVQ_CLI_ARGS_H
#define KVQ_CLI_ARGS_H

#include <stddef.h>
#include <stdint.h>

/* A signed decimal integer in [lo, hi] (an optional '-' or '+', then digits). */
int kvq_arg_long(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out);
/* An unsigned decimal integer in [lo, hi]: digits only ('-1' is refused, not wrapped). */
int kvq_arg_u64(const char *cmd, const char *opt, const char *s, uint64_t lo, uint64_t hi,
                uint64_t *out);
int kvq_arg_u32(const char *cmd, const char *opt, const char *s, uint32_t lo, uint32_t hi,
                uint32_t *out);
/* A decimal number in [lo, hi] ("1.5", "2e-3"): NaN never, an infinity only where hi
 * or lo is one; hexadecimal floats and surrounding spaces are refused. */
int kvq_arg_double(const char *cmd, const char *opt, const char *s, double lo, double hi,
                   double *out);

/* path names a regular file that can be opened for reading (not a directory, a FIFO
 * or a device); else one line "kvq <cmd>: <path>: is a directory" etc. */
int kvq_arg_regular_file(const char *cmd, const char *path);

/* path may be written: it does not exist yet or is a regular file (not a directory);
 * else one line and 1. */
int kvq_arg_output_file(const char *cmd, const char *path);

/* The whole of a regular text file, NUL bytes turned into spaces, NUL-terminated;
 * *len (may be NULL) gets its length. NULL after one line on stderr. */
char *kvq_cli_read_text(const char *cmd, const char *path, size_t *len);

#endif
