/* qdiff inspect: what a diffusers folder (or one component folder) holds: per
 * component its class, parameters, bytes on disk and resident, layers per stored
 * type, SVD ranks, skipped layers. The library describes it as JSON (qd_inspect);
 * this file prints that as tables, or as it is with --json. */
#include "cli.h"

#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage_inspect(FILE *f) {
    fprintf(f,
        "usage: qdiff inspect DIR [--json]\n"
        "\n"
        "  DIR          a diffusers folder (model_index.json + component folders) or one\n"
        "               component folder (config.json + safetensors weights)\n"
        "      --json   machine-readable output (the schema is in include/qdiff.h, qd_inspect)\n"
        "  -h, --help   this help\n"
        "\n"
        "Per component: class, parameter count, bytes on disk (its safetensors files) and\n"
        "resident when loaded (mapped weights + the fp32 copies the loader makes), layers\n"
        "per stored type and group size, SVD ranks, Hadamard/codebook and quantized-matmul\n"
        "layers, and layers the SDNQ config left unquantized (modules_to_not_convert).\n");
}

static double jnum(const cJSON *o, const char *key) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(it) ? it->valuedouble : 0;
}

static const char *jstr(const cJSON *o, const char *key, const char *def) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(it) ? it->valuestring : def;
}

/* 1234567 -> "1.23 M"; bytes -> "3.79 MB" (decimal units). */
static const char *human(char *buf, size_t n, double v, const char *unit) {
    static const char *pre[] = {"", "k", "M", "G", "T"};
    int i = 0;
    while (v >= 1000 && i < 4) { v /= 1000; i++; }
    if (i == 0) snprintf(buf, n, "%.0f %s", v, unit);
    else snprintf(buf, n, "%.2f %s%s", v, pre[i], unit);
    return buf;
}

/* "uint4 row-wise: 129, f16 dense: 34" */
static void types_line(const cJSON *types, char *buf, size_t n) {
    size_t o = 0;
    buf[0] = 0;
    const cJSON *r;
    cJSON_ArrayForEach(r, types) {
        if (o >= n) break;
        o += (size_t)snprintf(buf + o, n - o, "%s%s: %.0f", o ? ", " : "", jstr(r, "label", "?"), jnum(r, "layers"));
    }
    if (!o) snprintf(buf, n, "-");
}

static void print_detail(const cJSON *c) {
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(c, "layers");
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(c, "quantization");
    char a[32], b[32], d[32], e[32], f[32];
    printf("\n%s  %s", jstr(c, "name", "?"), jstr(c, "class", "(unknown class)"));
    if (cJSON_IsObject(q))
        printf("  [SDNQ %s, %s, config %s]", jstr(q, "version", "?"), jstr(q, "weights_dtype", "?"), jstr(q, "config", "?"));
    printf("\n  parameters %s (%.0f), on disk %s, resident %s = mapped %s + fp32 copies %s\n",
           human(a, sizeof a, jnum(c, "parameters"), ""), jnum(c, "parameters"), human(b, sizeof b, jnum(c, "disk_bytes"), "B"),
           human(d, sizeof d, jnum(c, "resident_bytes"), "B"), human(e, sizeof e, jnum(c, "mapped_bytes"), "B"),
           human(f, sizeof f, jnum(c, "fp32_copy_bytes"), "B"));
    const cJSON *r;
    cJSON_ArrayForEach(r, cJSON_GetObjectItemCaseSensitive(c, "layer_types"))
        printf("  %-28s %6.0f layers  %14.0f parameters\n", jstr(r, "label", "?"), jnum(r, "layers"), jnum(r, "parameters"));
    if (!cJSON_IsObject(q)) return;
    printf("  SVD:");
    const cJSON *ranks = cJSON_GetObjectItemCaseSensitive(c, "svd_ranks");
    if (!cJSON_GetArraySize(ranks)) printf(" none");
    cJSON_ArrayForEach(r, ranks) printf(" rank %.0f: %.0f layers;", jnum(r, "rank"), jnum(r, "layers"));
    printf("  Hadamard: %.0f", jnum(layers, "hadamard"));
    cJSON_ArrayForEach(r, cJSON_GetObjectItemCaseSensitive(c, "hadamard_sizes"))
        printf(" (block %.0f: %.0f)", jnum(r, "size"), jnum(r, "layers"));
    printf(";  codebook: %.0f\n", jnum(layers, "codebook"));
    printf("  quantized matmul (per the config): %.0f layers;  skipped (modules_to_not_convert): %.0f layers "
           "(%.0f entries);  zero points: %.0f", jnum(layers, "quantized_matmul"), jnum(layers, "skipped"),
           jnum(q, "modules_to_not_convert"), jnum(layers, "zero_point"));
    if (jnum(layers, "conv") || jnum(layers, "embedding"))
        printf(";  Linear %.0f, Conv %.0f, Embedding %.0f", jnum(layers, "linear"), jnum(layers, "conv"), jnum(layers, "embedding"));
    if (jnum(layers, "adjusted")) printf(";  stored layout differs from the config's derivation: %.0f", jnum(layers, "adjusted"));
    printf("\n");
}

static void print_tables(const cJSON *root) {
    const cJSON *comps = cJSON_GetObjectItemCaseSensitive(root, "components"), *tot = cJSON_GetObjectItemCaseSensitive(root, "totals");
    const char *pipe = jstr(root, "pipeline", NULL);
    printf("%s%s%s%s\n\n", jstr(root, "path", "?"), pipe ? " (" : "", pipe ? pipe : "", pipe ? ")" : "");
    printf("%-16s %-30s %11s %11s %11s  %s\n", "component", "class", "parameters", "on disk", "resident", "layers");
    char a[32], b[32], d[32], line[2048];
    const cJSON *c;
    cJSON_ArrayForEach(c, comps) {
        if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "weights"))) {
            printf("%-16s %-30s %11s %11s %11s  %s\n", jstr(c, "name", "?"), jstr(c, "class", "?"), "-", "-", "-", "(no weights)");
            continue;
        }
        types_line(cJSON_GetObjectItemCaseSensitive(c, "layer_types"), line, sizeof line);
        printf("%-16s %-30s %11s %11s %11s  %s\n", jstr(c, "name", "?"), jstr(c, "class", "?"),
               human(a, sizeof a, jnum(c, "parameters"), ""), human(b, sizeof b, jnum(c, "disk_bytes"), "B"),
               human(d, sizeof d, jnum(c, "resident_bytes"), "B"), line);
    }
    types_line(cJSON_GetObjectItemCaseSensitive(tot, "layer_types"), line, sizeof line);
    printf("%-16s %-30s %11s %11s %11s  %s\n", "total", "", human(a, sizeof a, jnum(tot, "parameters"), ""),
           human(b, sizeof b, jnum(tot, "disk_bytes"), "B"), human(d, sizeof d, jnum(tot, "resident_bytes"), "B"), line);
    cJSON_ArrayForEach(c, comps)
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "weights"))) print_detail(c);
}

int cmd_inspect(int argc, char **argv) {
    enum { O_JSON = 256 };
    static const struct option opts[] = {
        {"json", no_argument, 0, O_JSON}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0},
    };
    int json = 0, c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_JSON: json = 1; break;
        case 'h': usage_inspect(stdout); return 0;
        default:
            fprintf(stderr, "qdiff inspect: unknown option '%s'\n\n", argv[optind - 1]);
            usage_inspect(stderr);
            return EXIT_BAD;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "qdiff inspect: expected one folder (DIR)\n\n");
        usage_inspect(stderr);
        return EXIT_BAD;
    }
    qd_ctx *ctx = qd_ctx_new(1);
    if (!ctx) { fprintf(stderr, "qdiff: out of memory\n"); return EXIT_BAD; }
    char *text = NULL;
    int rc = EXIT_BAD;
    if (qd_inspect(ctx, argv[optind], &text) != QD_OK) {
        fprintf(stderr, "qdiff: %s\n", qd_last_error(ctx));
    } else if (json) {
        printf("%s\n", text);
        rc = 0;
    } else {
        cJSON *root = cJSON_Parse(text);
        if (!root) fprintf(stderr, "qdiff: inspect produced unreadable JSON\n");
        else { print_tables(root); rc = 0; }
        cJSON_Delete(root);
    }
    qd_free(text);
    qd_ctx_free(ctx);
    if (rc == 0 && fflush(stdout) != 0) rc = EXIT_BAD;
    return rc;
}
