/* qdiff quantize: write an SDNQ-quantized diffusers folder (qd_quantize), or with
 * --dry-run measure what each layer would become. Options map one to one onto
 * qd_quant_params; parse_sdnq_option() is the SDNQ group; quantize_extra_option()
 * (quantize_comfy.c: --format comfy_quant, its options, LoRA merging) comes first in
 * the chain in cmd_quantize(). The progress bar goes to stderr. */
#include "cli.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_LIST 256

typedef struct {
    qd_quant_params p;
    const char *in, *out;
    const char *skip[MAX_LIST];
    const char *dtype_for[MAX_LIST];
    int json, quiet;
    long threads;
    const char *sdnq_only;          /* the first SDNQ-only option given (refused with comfy_quant) */
    int dtype_given;                /* --weights-dtype was given (comfy_quant has its own default) */
    quantize_extra x;               /* --format, comfy_quant options, LoRA merging */
} quantize_opts;

static void usage_quantize(FILE *f) {
    fprintf(f,
        "usage: qdiff quantize IN OUT [options]\n"
        "       qdiff quantize IN --dry-run [options]\n"
        "       qdiff quantize --format comfy_quant IN.safetensors OUT.safetensors [options]\n"
        "\n"
        "Quantize a diffusers folder (fp32/fp16/bf16 weights) into an SDNQ diffusers folder\n"
        "as sdnq writes one: the chosen components' layers quantized, config.json and\n"
        "quantization_config.json carrying sdnq's quantization_config, every other component\n"
        "hard-linked or copied unchanged. Works tensor by tensor from the mapped input;\n"
        "the folder is built at OUT.tmp-XXXXXX and renamed when complete.\n"
        "\n"
        "IN may also be a single-file checkpoint (.safetensors): SD1.x or SDXL in the original\n"
        "layout (model.diffusion_model., first_stage_model., cond_stage_model. / conditioner.),\n"
        "FLUX.1 in the BFL/ComfyUI layout (double_blocks/single_blocks, optionally vae. and\n"
        "text_encoders.), or SD3/SD3.5 in the Stability layout (joint_blocks, optionally\n"
        "first_stage_model. and text_encoders.; needs --config-from), whole or the diffusion\n"
        "model alone. Its tensors get their diffusers names and OUT is the folder the\n"
        "equivalent diffusers folder would give.\n"
        "  --config-from DIR         a diffusers folder of the same family: component configs,\n"
        "                            tokenizers, scheduler, model_index.json and the components\n"
        "                            the file lacks come from it. Without it the configs are\n"
        "                            inferred from the shapes (head counts, norm groups, VAE\n"
        "                            scaling: the family's released values), the family's\n"
        "                            scheduler and model_index.json are written, and what the\n"
        "                            folder still lacks (tokenizers, absent components) is listed;\n"
        "                            copy those in from a diffusers folder before generating\n"
        "\n"
        "what to quantize:\n"
        "  --components LIST         comma-separated component folders (default: the denoiser,\n"
        "                            unet or transformer), e.g. unet,text_encoder\n"
        "  --weights-dtype TYPE      int8 (default), uint4, int5, float8_e4m3fn, float6_e3m2fn, ...\n"
        "                            any type qdiff reads; an unknown name lists them\n"
        "  --group-size N            0 auto (default), -1 row-wise, -2 tensor-wise, N > 0\n"
        "  --svd                     add a low-rank correction (svd_up . svd_down)\n"
        "  --svd-rank N              its rank (default 32; implies --svd)\n"
        "  --svd-steps N             subspace iterations of the randomized SVD (default 8)\n"
        "  --hadamard                store weights Hadamard-rotated\n"
        "  --hadamard-group-size N   largest rotation block (default 256)\n"
        "  --codebook                Lloyd-Max codebook per group (unsigned int types)\n"
        "  --codebook-steps N        its iterations (default 24)\n"
        "  --quantized-matmul        store layers in the layout for quantized matmul\n"
        "  --quantized-matmul-conv   the same for Conv layers\n"
        "  --quantized-matmul-dtype T  int8, uint8, fp8 or fp16 (default: from the weights type)\n"
        "  --quant-conv              also quantize Conv layers\n"
        "  --quant-embedding         also quantize Embedding layers\n"
        "  --dynamic                 per layer, the first type from --weights-dtype upwards\n"
        "                            whose loss (MSE / variance) is at most the threshold\n"
        "  --dynamic-loss X          that threshold (default 10^(-bits/2): uint4 1e-2, int8 1e-4)\n"
        "  --min-numel N             layers with fewer weights stay unquantized (default 16384)\n"
        "  --min-channels N          layers with fewer input channels stay unquantized (default 32)\n"
        "  --no-default-skips        do not apply sdnq's skip list for the model class\n"
        "  --skip PATTERN            keep matching layers unquantized (repeatable; sdnq's name\n"
        "                            rules: '.x' root prefix, 'x' a name component, '*' wildcard)\n"
        "  --dtype-for PATTERN=TYPE  weights type for matching layers (repeatable; first wins)\n"
        "  --layer-config FILE       per-layer settings as written by --template\n"
        "  --seed N                  seed of the SVD start vectors (default 0)\n"
        "\n"
        "output:\n"
        "  --dry-run                 quantize in memory and report, write nothing (OUT not needed)\n"
        "  --template FILE           write the per-layer settings and results as JSON\n"
        "  --json                    print the report as JSON on stdout\n"
        "  --force                   replace an existing OUT\n"
        "  --threads N               worker threads (default: all cores)\n"
        "  -q, --quiet               no progress bar\n"
        "  -h, --help                this help\n"
        "\n"
        "The report gives per layer the shape, stored type and group size, bytes, relative\n"
        "error ||W - dequant(W)|| / ||W|| and SNR in dB; then per component and in total.\n"
        "\n");
    quantize_extra_usage(f);
}

/* Options of the SDNQ group: 1 consumed (with *i advanced past its value),
 * 0 not one of ours, -1 bad value (message printed). */
static int parse_sdnq_option(quantize_opts *o, int argc, char **argv, int *i) {
    const char *a = argv[*i];
    const char *v = *i + 1 < argc ? argv[*i + 1] : NULL;
    long n;
    qd_quant_params *p = &o->p;
    static const struct { const char *name; size_t off; } flags[] = {
        {"--svd", offsetof(qd_quant_params, use_svd)},
        {"--hadamard", offsetof(qd_quant_params, use_hadamard)},
        {"--codebook", offsetof(qd_quant_params, use_codebook)},
        {"--quantized-matmul", offsetof(qd_quant_params, use_quantized_matmul)},
        {"--quantized-matmul-conv", offsetof(qd_quant_params, use_quantized_matmul_conv)},
        {"--quant-conv", offsetof(qd_quant_params, quant_conv)},
        {"--quant-embedding", offsetof(qd_quant_params, quant_embedding)},
        {"--dynamic", offsetof(qd_quant_params, dynamic)},
        {"--dry-run", offsetof(qd_quant_params, dry_run)},
        {"--force", offsetof(qd_quant_params, force)},
    };
    for (size_t k = 0; k < sizeof flags / sizeof *flags; k++)
        if (!strcmp(a, flags[k].name)) { *(int *)((char *)p + flags[k].off) = 1; return 1; }
    if (!strcmp(a, "--no-default-skips")) { p->default_skips = 0; return 1; }
    static const struct { const char *name; size_t off; long lo, hi; int is_long; } ints[] = {
        {"--group-size", offsetof(qd_quant_params, group_size), -1000000000L, 1000000000L, 0},
        {"--svd-rank", offsetof(qd_quant_params, svd_rank), 1, 65536, 0},
        {"--svd-steps", offsetof(qd_quant_params, svd_steps), 0, 1000, 0},
        {"--hadamard-group-size", offsetof(qd_quant_params, hadamard_group_size), 4, 4096, 0},
        {"--codebook-steps", offsetof(qd_quant_params, codebook_steps), 0, 1000, 0},
        {"--min-numel", offsetof(qd_quant_params, min_numel), 0, 1L << 40, 1},
        {"--min-channels", offsetof(qd_quant_params, min_channels), 0, 1L << 30, 1},
    };
    for (size_t k = 0; k < sizeof ints / sizeof *ints; k++) {
        if (strcmp(a, ints[k].name)) continue;
        if (!v) { fprintf(stderr, "qdiff: %s needs a value\n", a); return -1; }
        if (cli_parse_int(v, a, ints[k].lo, ints[k].hi, &n) != 0) return -1;
        if (ints[k].is_long) *(long *)((char *)p + ints[k].off) = n;
        else *(int *)((char *)p + ints[k].off) = (int)n;
        if (!strcmp(a, "--svd-rank")) p->use_svd = 1;
        (*i)++;
        return 1;
    }
    static const char *strs[] = {"--components", "--weights-dtype", "--quantized-matmul-dtype", "--layer-config",
                                 "--template", "--skip", "--dtype-for", "--dynamic-loss", "--seed", "--threads",
                                 "--config-from"};
    for (size_t k = 0; k < sizeof strs / sizeof *strs; k++) {
        if (strcmp(a, strs[k])) continue;
        if (!v) { fprintf(stderr, "qdiff: %s needs a value\n", a); return -1; }
        (*i)++;
        if (!strcmp(a, "--components")) p->components = v;
        else if (!strcmp(a, "--config-from")) p->config_from = v;
        else if (!strcmp(a, "--weights-dtype")) p->weights_dtype = v;
        else if (!strcmp(a, "--quantized-matmul-dtype")) p->quantized_matmul_dtype = v;
        else if (!strcmp(a, "--layer-config")) p->layer_config = v;
        else if (!strcmp(a, "--template")) p->template_path = v;
        else if (!strcmp(a, "--skip") || !strcmp(a, "--dtype-for")) {
            int *cnt = a[2] == 's' ? &p->n_skip : &p->n_dtype_for;
            const char **arr = a[2] == 's' ? o->skip : o->dtype_for;
            if (*cnt == MAX_LIST) { fprintf(stderr, "qdiff: too many %s options\n", a); return -1; }
            arr[(*cnt)++] = v;
        } else if (!strcmp(a, "--dynamic-loss")) {
            float x;
            if (cli_parse_float(v, a, &x) != 0) return -1;
            if (!(x >= 0) || isinf(x)) { fprintf(stderr, "qdiff: --dynamic-loss expects a number >= 0, got '%s'\n", v); return -1; }
            p->dynamic_loss = x;
            p->dynamic = 1;
        } else if (!strcmp(a, "--seed")) {
            if (cli_parse_int(v, a, 0, 0x7fffffffL, &n) != 0) return -1;
            p->seed = (uint64_t)n;
        } else {
            if (cli_parse_int(v, a, 1, 1024, &o->threads) != 0) return -1;
        }
        return 1;
    }
    if (!strcmp(a, "--json")) { o->json = 1; return 1; }
    if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) { o->quiet = 1; return 1; }
    return 0;
}

/* ---- progress bar ---- */

typedef struct { int tty; double last; } bar;

static int progress(void *user, int64_t done, int64_t total, const char *tensor, double elapsed) {
    bar *b = user;
    if (!b->tty) return 0;
    if (elapsed - b->last < 0.1 && done < total) return 0;
    b->last = elapsed;
    double frac = total > 0 ? (double)done / (double)total : 1;
    int w = 30, fill = (int)(frac * w + 0.5);
    char line[w + 1];
    for (int k = 0; k < w; k++) line[k] = k < fill ? '#' : '.';
    line[w] = 0;
    double eta = frac > 0.001 ? elapsed * (1 - frac) / frac : 0;
    fprintf(stderr, "\r[%s] %5.1f%%  %6.1f s  ETA %6.1f s  %-40.40s", line, 100 * frac, elapsed, eta, tensor);
    if (done >= total) fprintf(stderr, "\n");
    fflush(stderr);
    return 0;
}

/* ---- report ---- */

static void print_report(const cJSON *rep, int layers) {
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(rep, "components")) {
        printf("%s  %s\n", cli_jstr(c, "name"), cli_jstr(c, "class") ? cli_jstr(c, "class") : "");
        if (layers) {
            printf("  %-60s %-18s %-10s %-16s %12s %12s %10s %8s\n", "layer", "shape", "type", "group", "bytes in",
                   "bytes out", "rel err", "SNR dB");
            const cJSON *l;
            cJSON_ArrayForEach(l, cJSON_GetObjectItemCaseSensitive(c, "layers")) {
                char shape[64] = "";
                size_t o = 0;
                const cJSON *d;
                cJSON_ArrayForEach(d, cJSON_GetObjectItemCaseSensitive(l, "shape"))
                    if (o < sizeof shape) o += (size_t)snprintf(shape + o, sizeof shape - o, o ? "x%.0f" : "%.0f", d->valuedouble);
                if (cli_jstr(l, "skipped")) {
                    printf("  %-60s %-18s %-10s %s\n", cli_jstr(l, "name"), shape, "-", cli_jstr(l, "skipped"));
                    continue;
                }
                char group[48];
                const char *g = cli_jstr(l, "grouping");
                if (g && !strcmp(g, "group")) snprintf(group, sizeof group, "g%.0f", cli_jnum(l, "group_size"));
                else snprintf(group, sizeof group, "%s", g ? g : "?");
                if (cli_jnum(l, "svd_rank") > 0) snprintf(group + strlen(group), sizeof group - strlen(group), " svd%.0f", cli_jnum(l, "svd_rank"));
                printf("  %-60s %-18s %-10s %-16s %12.0f %12.0f %10.6f %8.2f\n", cli_jstr(l, "name"), shape, cli_jstr(l, "dtype"),
                       group, cli_jnum(l, "bytes_in"), cli_jnum(l, "bytes_out"), cli_jnum(l, "rel_error"), cli_jnum(l, "snr_db"));
            }
        }
        printf("  quantized %.0f layers, kept %.0f; %.0f -> %.0f bytes (%.1f%%); rel error %.6f, SNR %.2f dB\n",
               cli_jnum(c, "quantized"), cli_jnum(c, "skipped"), cli_jnum(c, "bytes_in"), cli_jnum(c, "bytes_out"),
               100 * cli_jnum(c, "bytes_out") / cli_jnum(c, "bytes_in"), cli_jnum(c, "rel_error"), cli_jnum(c, "snr_db"));
    }
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(rep, "totals");
    printf("total: quantized %.0f layers, kept %.0f; %.0f -> %.0f bytes (%.1f%%); rel error %.6f, SNR %.2f dB; %.1f s\n",
           cli_jnum(t, "quantized"), cli_jnum(t, "skipped"), cli_jnum(t, "bytes_in"), cli_jnum(t, "bytes_out"),
           100 * cli_jnum(t, "bytes_out") / cli_jnum(t, "bytes_in"), cli_jnum(t, "rel_error"), cli_jnum(t, "snr_db"), cli_jnum(t, "seconds"));
}

/* Plan hook: mark the LoRA pairs that name a weight; at the end, refuse a LoRA none of
 * whose pairs did. */
static int lora_plan(void *user, const char *component, const char *tensor_name, const int64_t *shape, int ndim) {
    quantize_extra *x = user;
    if (component) {
        qd_lora_set_plan_tensor(x->lora, component, tensor_name, shape, ndim);
        return 0;
    }
    return qd_lora_set_check(x->ctx, x->lora) != QD_OK;
}

/* Ctrl-C / SIGTERM cancel the run, so the library removes the half-built OUT.tmp-* folder. */
static qd_ctx *running;
static void on_signal(int sig) {
    (void)sig;
    if (running) qd_cancel(running);
}

int cmd_quantize(int argc, char **argv) {
    quantize_opts o;
    memset(&o, 0, sizeof o);
    qd_quant_params_default(&o.p);
    quantize_extra_init(&o.x);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage_quantize(stdout); quantize_extra_free(&o.x); return 0; }
        if (a[0] == '-' && a[1]) {
            int r = quantize_extra_option(&o.x, argc, argv, &i);
            if (r == 0) {
                r = parse_sdnq_option(&o, argc, argv, &i);
                /* options both formats share; everything else of that group is SDNQ's */
                static const char *shared[] = {"--weights-dtype", "--dry-run", "--force", "--json", "-q", "--quiet", "--threads"};
                int is_shared = 0;
                for (size_t k = 0; k < sizeof shared / sizeof *shared; k++) is_shared |= !strcmp(a, shared[k]);
                if (r == 1 && !is_shared && !o.sdnq_only) o.sdnq_only = a;
                if (r == 1 && !strcmp(a, "--weights-dtype")) o.dtype_given = 1;
            }
            if (r < 0) { quantize_extra_free(&o.x); return EXIT_BAD; }
            if (r == 0) {
                fprintf(stderr, "qdiff quantize: unknown option '%s' (see qdiff quantize --help)\n", a);
                quantize_extra_free(&o.x);
                return EXIT_BAD;
            }
            continue;
        }
        if (!o.in) o.in = a;
        else if (!o.out) o.out = a;
        else { fprintf(stderr, "qdiff quantize: unexpected argument '%s'\n", a); quantize_extra_free(&o.x); return EXIT_BAD; }
    }
    int comfy = !strcmp(o.x.format, "comfy_quant");
    const char *conflict = NULL;
    if (o.x.out && o.out) conflict = "OUT given twice (positional and -o)";
    if (o.x.out) o.out = o.x.out;
    if (!conflict && comfy && o.sdnq_only) {
        fprintf(stderr, "qdiff quantize: %s is not available with --format comfy_quant\n", o.sdnq_only);
        quantize_extra_free(&o.x);
        return EXIT_BAD;
    }
    if (!conflict && !comfy && o.x.comfy_only) {
        fprintf(stderr, "qdiff quantize: %s needs --format comfy_quant\n", o.x.comfy_only);
        quantize_extra_free(&o.x);
        return EXIT_BAD;
    }
    if (conflict || !o.in || (!o.out && !o.p.dry_run)) {
        if (conflict) fprintf(stderr, "qdiff quantize: %s\n\n", conflict);
        else fprintf(stderr, "qdiff quantize: needs IN and OUT %s (or IN --dry-run)\n\n", comfy ? "files" : "folders");
        usage_quantize(stderr);
        quantize_extra_free(&o.x);
        return EXIT_BAD;
    }
    o.p.skip = o.skip;
    o.p.dtype_for = o.dtype_for;
    bar b = {isatty(2) && !o.quiet, -1};
    o.p.progress = progress;
    o.p.progress_user = &b;
    qd_ctx *ctx = qd_ctx_new((int)o.threads);
    if (!ctx) { fprintf(stderr, "qdiff: out of memory\n"); quantize_extra_free(&o.x); return EXIT_BAD; }
    /* Ctrl-C / SIGTERM cancel the run: the library removes its temporary output */
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    running = ctx;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    qd_status st = quantize_extra_open_loras(ctx, &o.x);
    int comfy_rc = -1;
    int64_t lora_matched = -1, lora_total = 0;
    char *json = NULL;
    if (st == QD_OK && comfy) {
        comfy_rc = quantize_comfy_run(ctx, &o.x, o.in, o.out, o.dtype_given ? o.p.weights_dtype : NULL, o.p.dry_run,
                                      o.p.force, o.json, progress, &b);
    } else if (st == QD_OK) {
        if (o.x.lora) {
            /* a LoRA naming no weight of the chosen components fails in the planning pass,
             * before anything is written (names as the output has them, also for a single file) */
            o.p.plan = lora_plan;
            o.p.plan_user = &o.x;
            o.x.ctx = ctx;
            o.p.prepare = quantize_extra_prepare;
            o.p.prepare_user = &o.x;
        }
        if (st == QD_OK) st = qd_quantize(ctx, o.in, o.p.dry_run ? NULL : o.out, &o.p, &json);
        if (st == QD_OK && o.x.lora) st = qd_lora_set_check(ctx, o.x.lora);   /* warns about pairs left over */
        if (st == QD_OK && o.x.lora) qd_lora_set_report(o.x.lora, &lora_matched, &lora_total);
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    running = NULL;
    quantize_extra_free(&o.x);
    if (comfy_rc >= 0) { qd_ctx_free(ctx); return comfy_rc; }
    if (st != QD_OK) {
        if (b.tty && b.last >= 0) fprintf(stderr, "\n");
        fprintf(stderr, "qdiff quantize: %s\n", qd_last_error(ctx));
        qd_free(json);
        qd_ctx_free(ctx);
        return st == QD_ERR_CANCELLED ? 130 : EXIT_BAD;
    }
    if (o.json) printf("%s\n", json);
    else {
        cJSON *rep = cJSON_Parse(json);
        if (rep) print_report(rep, o.p.dry_run);
        const cJSON *miss = rep ? cJSON_GetObjectItemCaseSensitive(rep, "missing") : NULL;
        if (cJSON_GetArraySize(miss) > 0) {
            printf("%s:", o.p.dry_run ? "the output folder would lack" : "the output folder lacks");
            const cJSON *m;
            cJSON_ArrayForEach(m, miss) printf(" %s", cJSON_IsString(m) ? m->valuestring : "?");
            printf(" (copy them from a diffusers folder of the family, or quantize again with --config-from DIR)\n");
        }
        cJSON_Delete(rep);
        if (lora_matched >= 0)
            printf("LoRA: %lld of %lld layers matched a weight\n", (long long)lora_matched, (long long)lora_total);
        if (!o.p.dry_run) printf("wrote %s\n", o.out);
    }
    qd_free(json);
    qd_ctx_free(ctx);
    return 0;
}
