/* layer_set.c - find, expand and check the layer pattern of a per-layer artifact set;
 * the manifest itself is the library's (kvq_layer_set_seal / kvq_layer_set_check). */
#include "layer_set.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cache_configs.h"
#include "kvq.h"

int kvq_cli_layer_manifest(const char *pattern, char *out, size_t out_size) {
    const char *end;
    int zero, width;
    const char *p = kvq_cli_find_layer_pattern(pattern, &end, &zero, &width);
    if (!p) return -1;
    int n = snprintf(out, out_size, "%.*ss.manifest", (int)(p - pattern), pattern);
    return n >= 0 && (size_t)n < out_size ? 0 : -1;
}

/* paths[l] = pattern with layer l; NULL on a bad pattern or no memory */
static char **expand_all(const char *pattern, uint32_t n_layers) {
    const char *end;
    int zero, width;
    const char *p = kvq_cli_find_layer_pattern(pattern, &end, &zero, &width);
    if (!p || strchr(end, '%')) return NULL;
    char **paths = calloc(n_layers, sizeof *paths);
    for (uint32_t l = 0; paths && l < n_layers; l++) {
        size_t size = strlen(pattern) + 16;
        if (!(paths[l] = malloc(size))) {
            for (uint32_t k = 0; k < l; k++) free(paths[k]);
            free(paths);
            return NULL;
        }
        snprintf(paths[l], size, "%.*s%0*u%s", (int)(p - pattern), pattern, zero ? width : 0, l, end);
        if (!zero && width) snprintf(paths[l], size, "%.*s%*u%s", (int)(p - pattern), pattern, width, l, end);
    }
    return paths;
}

static void free_all(char **paths, uint32_t n) {
    for (uint32_t l = 0; paths && l < n; l++) free(paths[l]);
    free(paths);
}

/* One artifact path with a layer pattern: 0 if its set matches its manifest (or has none). */
static int check_one(const char *cmd, const char *pattern, uint32_t n_layers) {
    char manifest[1400];
    if (kvq_cli_layer_manifest(pattern, manifest, sizeof manifest)) return 0; /* one artifact */
    char **paths = expand_all(pattern, n_layers);
    if (!paths) return 0; /* a stray '%': the spec parser reports it */
    struct stat sb;
    int rc = 0;
    if (stat(manifest, &sb) != 0 && errno == ENOENT) {
        fprintf(stderr, "kvq %s: note: %s has no manifest %s: its files are not checked as one set\n", cmd,
                pattern, manifest);
    } else {
        char msg[1024] = "";
        kvq_status st = kvq_layer_set_check(manifest, (const char *const *)paths, n_layers, msg, sizeof msg);
        if (st != KVQ_OK) {
            fprintf(stderr, "kvq %s: per-layer artifacts: %s\n", cmd, msg[0] ? msg : kvq_strerror(st));
            rc = 1;
        }
    }
    free_all(paths, n_layers);
    return rc;
}

int kvq_cli_check_layer_set(const char *cmd, const char *spec, uint32_t n_layers) {
    if (!spec || n_layers == 0) return 0;
    /* every artifact in the spec: keys and values (K+V), before any @cache options */
    for (const char *a = strstr(spec, "artifact="); a; a = strstr(a, "artifact=")) {
        a += 9;
        char pattern[1400];
        size_t len = strcspn(a, ",+@");
        if (len >= sizeof pattern) return 0; /* the spec parser reports it */
        memcpy(pattern, a, len);
        pattern[len] = 0;
        if (check_one(cmd, pattern, n_layers)) return 1;
    }
    return 0;
}

int kvq_cli_seal_layer_set(const char *cmd, const char *pattern, uint32_t n_layers) {
    char manifest[1400], msg[1024] = "";
    char **paths = kvq_cli_layer_manifest(pattern, manifest, sizeof manifest) ? NULL : expand_all(pattern, n_layers);
    if (!paths) {
        fprintf(stderr, "kvq %s: %s: cannot name the layer set's manifest\n", cmd, pattern);
        return 1;
    }
    kvq_status st = kvq_layer_set_seal(manifest, (const char *const *)paths, n_layers, msg, sizeof msg);
    free_all(paths, n_layers);
    if (st != KVQ_OK) {
        fprintf(stderr, "kvq %s: %s\n", cmd, msg[0] ? msg : kvq_strerror(st));
        return 1;
    }
    return 0;
}
