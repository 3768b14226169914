/* kvq.c - the command-line tool, built on the public API only. */
#include <stdio.h>
#include <string.h>

#include "kvq.h"

static int usage(FILE *f) {
    fprintf(f,
            "kvq %s - key/value-cache and vector compression\n"
            "\n"
            "usage: kvq <command> [options]\n"
            "\n"
            "commands:\n"
            "  version     print the version and the CPU kernels in use\n"
            "  help        this text\n",
            kvq_version_string());
    return f == stderr ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage(stderr);
    const char *cmd = argv[1];
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) return usage(stdout);
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("kvq %s (kernels: %s)\n", kvq_version_string(), kvq_cpu_isa());
        return 0;
    }
    fprintf(stderr, "kvq: unknown command '%s' (try 'kvq help')\n", cmd);
    return 1;
}
