/* kvq.c - the command-line tool's entry point: dispatches to tools/cmd_*.c. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cli.h"

static const kvq_cli_command commands[] = {
    {"generate", "generate text from a GGUF model with a compressed KV cache", kvq_cmd_generate},
    {"perplexity", "perplexity of a text under each KV cache config", kvq_cmd_perplexity},
    {"info", "describe a GGUF model file", kvq_cmd_info},
    {"bench", "quality, memory and speed of each method on synthetic KV", kvq_cmd_bench},
    {"calibrate", "fit a calibrated method and save its artifact", kvq_cmd_calibrate},
    {"index", "build and search a RaBitQ vector index", kvq_cmd_index},
    {"quant", "encode/decode vectors with one quantizer", kvq_cmd_quant},
    {"serve", "an OpenAI-compatible HTTP server with compressed KV caches", kvq_cmd_serve},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

int kvq_cli_fail(const char *cmd, const char *what, kvq_status st) {
    const char *why = kvq_last_error();
    fprintf(stderr, "kvq %s: %s: %s%s%s\n", cmd, what, kvq_strerror(st), why[0] ? ": " : "", why);
    return 1;
}

double kvq_cli_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int usage(FILE *f) {
    fprintf(f,
            "kvq %s - key/value-cache and vector compression\n\n"
            "usage: kvq <command> [options]     (kvq <command> --help for its options)\n\n"
            "commands:\n",
            kvq_version_string());
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (commands[i].run) fprintf(f, "  %-11s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "  %-11s %s\n  %-11s %s\n", "version", "print the version and the CPU kernels in use",
            "help", "this text");
    return f == stderr ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage(stderr);
    const char *cmd = argv[1];
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        if (argc > 2) {
            for (size_t i = 0; i < N_COMMANDS; i++)
                if (commands[i].run && !strcmp(argv[2], commands[i].name)) {
                    char help[] = "--help";
                    char *sub[] = {argv[2], help, NULL};
                    return commands[i].run(2, sub);
                }
        }
        return usage(stdout);
    }
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("kvq %s (kernels: %s)\n", kvq_version_string(), kvq_cpu_isa());
        return 0;
    }
    for (size_t i = 0; i < N_COMMANDS; i++) {
        if (strcmp(cmd, commands[i].name) != 0) continue;
        if (!commands[i].run) {
            fprintf(stderr, "kvq: '%s' is not available in this build%s\n", cmd,
                    !strcmp(cmd, "serve") ? " (it needs libmicrohttpd and cJSON: scripts/deps.sh installs them)" : "");
            return 1;
        }
        return commands[i].run(argc - 1, argv + 1);
    }
    fprintf(stderr, "kvq: unknown command '%s' (try 'kvq help')\n", cmd);
    return 1;
}
