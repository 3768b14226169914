/*
 * test_install.c - the install story end to end: scripts/check-install.sh installs into
 * a temporary prefix and builds examples/hello.c with pkg-config and with CMake's
 * find_package, then runs both. Skipped (with the reason) where a tool is missing.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"

static int have_tool(const char *name) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "command -v %s >/dev/null 2>&1", name);
    int rc = system(cmd);
    return rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0;
}

TEST(install_pkgconfig_and_cmake_builds_run) {
    static const char *tools[] = {"make", "cc", "pkg-config", "cmake"};
    for (size_t i = 0; i < sizeof tools / sizeof tools[0]; i++) {
        if (!have_tool(tools[i])) {
            char reason[128];
            snprintf(reason, sizeof reason, "%s is not installed", tools[i]);
            SKIP(reason);
        }
    }
    if (access("scripts/check-install.sh", X_OK) != 0)
        SKIP("not run from the source tree (scripts/check-install.sh not found)");
    /* Under qemu-user (make test-arm64) the shell and make are the host's: the script
     * would install and check the native build, not the one under test. */
    char host[64] = "";
    FILE *p = popen("uname -m", "r");
    if (p) {
        if (!fgets(host, sizeof host, p)) host[0] = '\0';
        pclose(p);
    }
    host[strcspn(host, "\n")] = '\0';
#if defined(__x86_64__)
    const char *self = "x86_64";
#elif defined(__aarch64__)
    const char *self = "aarch64";
#else
    const char *self = host;
#endif
    if (host[0] && strcmp(host, self) != 0) SKIP("running under emulation: the host's tools would check the host's build");
    /* The suite itself may run inside `make test-asan` or `make test-arm64`: drop the
     * variables a parent make exports so the script installs the plain native build,
     * not the sanitizer or cross build it was started from (its OPT and NO_CUDA would
     * make build/ rebuild in that configuration: build/config.stamp). */
    const char *log = kvqt_tmpdir(kvqt_);
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u MAKEOVERRIDES -u CC -u BUILD -u SAN -u OPT -u NO_CUDA "
             "scripts/check-install.sh >%s/out.txt 2>&1",
             log);
    int rc = system(cmd);
    int ok = rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0;
    if (!ok) {
        char show[700];
        snprintf(show, sizeof show, "tail -n 30 %s/out.txt", log);
        fflush(stdout);
        if (system(show) == -1) fprintf(stdout, "    (could not show the log)\n");
    }
    CHECKF(ok, "scripts/check-install.sh failed (exit status %d)",
           rc != -1 && WIFEXITED(rc) ? WEXITSTATUS(rc) : -1);
}
