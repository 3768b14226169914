/* cli.h - the CLI's commands, each in its own tools/cmd_*.c, on the public API only.
 * Each returns the process exit code (0 ok, 1 error after one line on stderr). */
#ifndef KVQ_CLI_H
#define KVQ_CLI_H

#include <stdio.h>

#include "kvq.h"

typedef struct kvq_cli_command {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv); /* argv[0] is the command name */
} kvq_cli_command;

/* Weak: a command whose file is not built reports "not available in this build". */
#if defined(__GNUC__)
#define KVQ_CLI_WEAK __attribute__((weak))
#else
#define KVQ_CLI_WEAK
#endif
KVQ_CLI_WEAK int kvq_cmd_bench(int argc, char **argv);
KVQ_CLI_WEAK int kvq_cmd_generate(int argc, char **argv);
KVQ_CLI_WEAK int kvq_cmd_perplexity(int argc, char **argv);
KVQ_CLI_WEAK int kvq_cmd_info(int argc, char **argv);
KVQ_CLI_WEAK int kvq_cmd_calibrate(int argc, char **argv);
KVQ_CLI_WEAK int kvq_cmd_index(int argc, char **argv);
KVQ_CLI_WEAK int kvq_cmd_quant(int argc, char **argv);
/* Built only with libmicrohttpd and cJSON (tools/serve/). */
KVQ_CLI_WEAK int kvq_cmd_serve(int argc, char **argv);

/* Print "kvq <cmd>: <what>: <status sentence>[: <kvq_last_error()>]" on stderr and
 * return 1 (callers clear the last error before the call that failed). */
int kvq_cli_fail(const char *cmd, const char *what, kvq_status st);

/* Seconds on the monotonic clock (differences only), for the commands' timings. */
double kvq_cli_now_s(void);

#endif
