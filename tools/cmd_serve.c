/* qdiff serve: an HTTP server with the A1111- and OpenAI-compatible image APIs and a
 * web page, over models loaded once and kept. Ctrl-C / SIGTERM stop it cleanly:
 * jobs are cancelled, connections closed, everything freed. */
#include "server.h"

#include <getopt.h>
#include <microhttpd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void usage_serve(FILE *f) {
    fprintf(f,
        "usage: qdiff serve -m DIR|FILE.safetensors [--config-from DIR] [options]\n"
        "\n"
        "Serves the model over HTTP: an AUTOMATIC1111-compatible API (/sdapi/v1/txt2img, img2img,\n"
        "progress, interrupt, samplers, schedulers, sd-models, options, loras), an OpenAI-compatible\n"
        "/v1/images/generations and /edits, /health, and a web page at /. The model is loaded once and\n"
        "kept; requests wait in a queue (one worker per model) instead of failing.\n"
        "\n"
        "  -m, --model DIR|FILE       the default model: a diffusers folder, or a single-file checkpoint\n"
        "                             (.safetensors; needs --config-from)\n"
        "      --models DIR           more models: each sub-folder with a model_index.json (and, with\n"
        "                             --config-from, each .safetensors file), chosen per request (A1111\n"
        "                             override_settings.sd_model_checkpoint, OpenAI model), loaded on first use\n"
        "      --config-from DIR      for single-file checkpoints: a diffusers folder of their family giving\n"
        "                             the configs, tokenizers and scheduler (as generate --config-from)\n"
        "      --lora-dir DIR         LoRAs a prompt may name as <lora:NAME:WEIGHT> (A1111 syntax; WEIGHT\n"
        "                             default 1): DIR/NAME.safetensors or a PEFT folder DIR/NAME/; applied\n"
        "                             for that request only (GET /sdapi/v1/loras lists them)\n"
        "      --host HOST            address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)\n"
        "      --port N               port (default 7860; 0 picks a free one)\n"
        "  -t, --threads N            worker threads per model (default: all cores)\n"
        "      --precision P          dense math of every model: auto (default: bf16 where the CPU has\n"
        "                             AVX512_BF16; $QD_PRECISION sets the default), fp32 or bf16\n"
        "      --preview-vae PATH     VAE for live previews in /sdapi/v1/progress (the family's TAESD\n"
        "                             .safetensors/.pth or a vae/ folder); models of another latent\n"
        "                             space run without previews\n"
        "      --preview-every N      a preview every N model calls (default 1)\n"
        "      --max-steps N          most sampling steps a request may ask (default 150)\n"
        "      --max-batch N          most images per request (default 8)\n"
        "      --max-size PX          largest width or height (default 2048)\n"
        "      --max-body BYTES       largest request body (default 1048576)\n"
        "  -q, --quiet                no log of jobs on stderr\n"
        "  -h, --help                 this help\n"
        "\n"
        "Errors are JSON {\"error\": {\"message\", \"type\", \"param\", \"code\"}} with status 400 (bad\n"
        "field, named in param), 404, 405, 409 (interrupted), 413 (body over --max-body), 500, and\n"
        "503 (model loading or server stopping; Retry-After is set).\n");
}

static int parse_size(const char *arg, size_t *out) {
    char *end;
    unsigned long long v = strtoull(arg, &end, 10);
    if (end == arg || *end || arg[0] == '-' || v < 64 || v > (1ull << 34)) {
        fprintf(stderr, "qdiff: --max-body expects bytes in 64..%llu, got '%s'\n", 1ull << 34, arg);
        return -1;
    }
    *out = (size_t)v;
    return 0;
}

int cmd_serve(int argc, char **argv) {
    enum { O_HOST = 256, O_PORT, O_MODELS, O_PREVIEW_VAE, O_PREVIEW_EVERY, O_MAX_STEPS, O_MAX_BATCH, O_MAX_SIZE,
           O_MAX_BODY, O_PRECISION, O_LORA_DIR, O_CONFIG_FROM };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"models", required_argument, 0, O_MODELS},
        {"host", required_argument, 0, O_HOST}, {"port", required_argument, 0, O_PORT},
        {"threads", required_argument, 0, 't'}, {"preview-vae", required_argument, 0, O_PREVIEW_VAE},
        {"preview-every", required_argument, 0, O_PREVIEW_EVERY}, {"max-steps", required_argument, 0, O_MAX_STEPS},
        {"max-batch", required_argument, 0, O_MAX_BATCH}, {"max-size", required_argument, 0, O_MAX_SIZE},
        {"max-body", required_argument, 0, O_MAX_BODY}, {"precision", required_argument, 0, O_PRECISION},
        {"quiet", no_argument, 0, 'q'},
        {"lora-dir", required_argument, 0, O_LORA_DIR}, {"config-from", required_argument, 0, O_CONFIG_FROM},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    srv_options o = {.host = "127.0.0.1", .port = 7860, .max_steps = 150, .max_batch = 8, .max_size = 2048,
                     .max_body = 1 << 20, .preview_every = 1};
    long v;
    int c;
    if (cli_default_precision(&o.precision)) return EXIT_BAD;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:t:qh", opts, NULL)) != -1) {
        switch (c) {
        case 'm': o.model_dir = optarg; break;
        case O_MODELS: o.models_dir = optarg; break;
        case O_LORA_DIR: o.lora_dir = optarg; break;
        case O_CONFIG_FROM: o.config_from = optarg; break;
        case O_HOST: o.host = optarg; break;
        case O_PORT: if (cli_parse_int(optarg, "--port", 0, 65535, &v)) return EXIT_BAD; o.port = (int)v; break;
        case 't': if (cli_parse_int(optarg, "--threads", 1, 256, &v)) return EXIT_BAD; o.threads = (int)v; break;
        case O_PREVIEW_VAE: o.preview_vae = optarg; break;
        case O_PREVIEW_EVERY:
            if (cli_parse_int(optarg, "--preview-every", 1, 10000, &v)) return EXIT_BAD;
            o.preview_every = (int)v;
            break;
        case O_MAX_STEPS: if (cli_parse_int(optarg, "--max-steps", 1, 10000, &v)) return EXIT_BAD; o.max_steps = (int)v; break;
        case O_MAX_BATCH: if (cli_parse_int(optarg, "--max-batch", 1, 64, &v)) return EXIT_BAD; o.max_batch = (int)v; break;
        case O_MAX_SIZE: if (cli_parse_int(optarg, "--max-size", 64, 16384, &v)) return EXIT_BAD; o.max_size = (int)v; break;
        case O_MAX_BODY: if (parse_size(optarg, &o.max_body)) return EXIT_BAD; break;
        case O_PRECISION: if (cli_parse_precision(optarg, "--precision", &o.precision)) return EXIT_BAD; break;
        case 'q': o.quiet = 1; break;
        case 'h': usage_serve(stdout); return 0;
        default: usage_serve(stderr); return EXIT_BAD;
        }
    }
    if (optind < argc) { fprintf(stderr, "qdiff: unexpected argument '%s'\n", argv[optind]); return EXIT_BAD; }
    if (!o.model_dir) {
        fprintf(stderr, "qdiff: serve needs -m DIR or -m FILE.safetensors --config-from DIR (see qdiff serve --help)\n");
        return EXIT_BAD;
    }
    struct stat lst;
    if (o.lora_dir && (stat(o.lora_dir, &lst) != 0 || !S_ISDIR(lst.st_mode))) {
        fprintf(stderr, "qdiff: --lora-dir %s: not a folder\n", o.lora_dir);
        return EXIT_BAD;
    }

    /* Every thread started from here on inherits these blocked; the main thread takes
     * them with sigwait, so no handler runs in the middle of a job. SIGUSR1: the
     * start-up model failed to load. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    srv *s = calloc(1, sizeof *s);
    if (!s) { fprintf(stderr, "qdiff: out of memory\n"); return EXIT_BAD; }
    if (srv_init(s, &o)) { srv_free(s); free(s); return EXIT_BAD; }
    int port = 0;
    struct MHD_Daemon *d = srv_http_start(s, &port);
    if (!d) { srv_free(s); free(s); return EXIT_BAD; }
    fprintf(stderr, "qdiff serve: listening on http://%s%s%s:%d/ (model %s, %d more in --models)\n",
            strchr(o.host, ':') ? "[" : "", o.host, strchr(o.host, ':') ? "]" : "", port, s->models[0].name,
            s->n_models - 1);
    pthread_mutex_lock(&s->mu);
    srv_model_request_load(s, &s->models[0]);
    pthread_mutex_unlock(&s->mu);

    int rc = 0, sig = 0;
    for (;;) {
        if (sigwait(&sigs, &sig)) continue;
        if (sig != SIGUSR1) break;
        pthread_mutex_lock(&s->mu);
        int failed = s->load_failed_signal;
        pthread_mutex_unlock(&s->mu);
        if (failed) { rc = EXIT_BAD; break; }
    }
    if (rc == 0) fprintf(stderr, "qdiff serve: %s, stopping\n", sig == SIGINT ? "interrupted" : "terminated");
    srv_stop_jobs(s);      /* waiting requests get their 503 */
    srv_http_stop(s, d, 10);   /* their replies sent, joins the connection threads */
    srv_free(s);           /* joins the workers */
    free(s);
    return rc;
}
