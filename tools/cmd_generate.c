/* qdiff generate: text-to-image (or image-to-image with --init-image, inpainting with --mask) from a diffusers folder. */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void usage_generate(FILE *f) {
    fprintf(f,
        "usage: qdiff generate -m DIR -p TEXT -o OUT.png [options]\n"
        "\n"
        "  -m, --model DIR            diffusers folder (model_index.json + component folders), or a\n"
        "                             single-file checkpoint (.safetensors: SD1.x/SDXL original layout,\n"
        "                             FLUX.1 BFL/ComfyUI layout, SD3 Stability layout) with\n"
        "                             --config-from\n"
        "      --config-from DIR      for a single-file -m: a diffusers folder of its family giving the\n"
        "                             configs, tokenizers, scheduler and the components the file lacks\n"
        "  -p, --prompt TEXT          what to draw\n"
        "  -n, --negative TEXT        negative prompt (default: empty)\n"
        "  -o, --output OUT.png       output PNG; with --batch N > 1, OUT-1.png ... OUT-N.png\n"
        "      --steps N              sampling steps (default: 20 SD1.5/SDXL, 28 SD3/FLUX-dev, 4 FLUX-schnell)\n"
        "      --cfg X                classifier-free guidance scale (default: 7.5 SD1.5, 5 SDXL, 7 SD3,\n"
        "                             off for FLUX); <= 1 disables it\n"
        "      --guidance X           FLUX.1-dev embedded guidance (default 3.5)\n"
        "      --max-sequence-length N  T5 tokens (default: 256 SD3 and FLUX-schnell, 512 FLUX-dev)\n"
        "      --guidance-rescale X   rescale guided prediction toward the conditional std (default 0)\n"
        "      --seed N               seed of the torch-compatible CPU generator (default: random)\n"
        "  -W, --width N              image width in pixels, multiple of 8 (16 for SD3/FLUX)\n"
        "                             (default: the model's size)\n"
        "  -H, --height N             image height in pixels, likewise\n"
        "      --scheduler CLASS      diffusers scheduler class (default: the folder's own), one of:\n"
        "                             EulerDiscreteScheduler EulerAncestralDiscreteScheduler\n"
        "                             DPMSolverMultistepScheduler DPMSolverSinglestepScheduler\n"
        "                             DDIMScheduler PNDMScheduler DDPMScheduler LMSDiscreteScheduler\n"
        "                             HeunDiscreteScheduler KDPM2DiscreteScheduler\n"
        "                             KDPM2AncestralDiscreteScheduler DEISMultistepScheduler\n"
        "                             UniPCMultistepScheduler\n"
        "      --karras               use Karras sigmas (use_karras_sigmas=true)\n"
        "      --scheduler-options J  JSON object of scheduler config overrides,\n"
        "                             e.g. '{\"algorithm_type\":\"sde-dpmsolver++\"}'\n"
        "      --scheduler-opt K=V    set one scheduler option (repeatable; later ones win), e.g.\n"
        "                             prediction_type=v_prediction, use_karras_sigmas=true, s_churn=1\n"
        "      --sampler NAME         a ComfyUI sampler instead of a scheduler class: euler, euler_ancestral,\n"
        "                             dpmpp_2m, dpmpp_2m_sde, uni_pc, ... (qdiff samplers lists them)\n"
        "      --schedule NAME        the sampler's noise schedule: normal, karras, exponential, simple,\n"
        "                             sgm_uniform, beta, ... (default: normal; simple for SD3/FLUX)\n"
        "      --eta X                noise of ancestral/SDE samplers (default 1) or of DDIMScheduler\n"
        "      --noise-mode MODE      with --sampler: comfyui (default; initial noise from the seed, step\n"
        "                             noise from seed+1, as ComfyUI on the CPU) or diffusers (one generator)\n"
        "      --batch N              images per run (default 1)\n"
        "      --matmul MODE          SDNQ layers: auto (as the model's config asks), exact (dequantized\n"
        "                             weights, fp32 math) or int8 (int8 activations x int8 weights)\n"
        "      --precision P          dense math: auto (default: bf16 where the CPU has AVX512_BF16,\n"
        "                             else fp32; $QD_PRECISION sets the default), fp32 (the reference\n"
        "                             the golden tests check) or bf16 (bf16 operands, fp32\n"
        "                             accumulation; runs as fp32 without AVX512_BF16)\n"
        "      --lora FILE[:SCALE]    apply a LoRA while generating (repeatable; SCALE default 1, 0 skips\n"
        "                             it): kohya, diffusers, PEFT (alpha from adapter_config.json beside\n"
        "                             it) or BFL names; the loaded weights stay as they are\n"
        "  -t, --threads N            worker threads (default: all cores)\n"
        "      --vae-tile PX          decode the image in overlapping PX x PX tiles (bounded memory;\n"
        "                             tiles blend over 64 px); 0: never. Default: 512 px tiles\n"
        "                             above 1024 x 1024 pixels, else one pass\n"
        "      --preview FILE.png     write a live preview of the image being made (needs --preview-vae)\n"
        "      --preview-vae PATH     VAE for previews: the family's TAESD (.safetensors/.pth) or a vae/ folder\n"
        "      --preview-every N      preview every N model calls (default 1)\n"
        "      --preview-size PX      previews at most PX pixels on the longer side, the latents\n"
        "                             shrunk by an integer factor before decoding (default 256;\n"
        "                             0: full size)\n"
        "      --save-latents F       also write the final latents to F (.safetensors, tensor \"latents\")\n"
        "      --init-image IMG       image-to-image: start from this PNG/JPEG, resized to -W x -H (default:\n"
        "                             its own size rounded down to a multiple of 8, 16 for SD3/FLUX)\n"
        "      --resize-mode MODE     how --init-image (and --mask) meet -W x -H, as A1111: just (stretch,\n"
        "                             default), crop (cover, centre, cut), fill (fit, stretch the edges)\n"
        "      --strength X           with --init-image: how much to change it, in (0, 1] (diffusers'\n"
        "                             strength, ComfyUI's denoise; default 0.8 SD1.5, 0.3 SDXL, 0.6\n"
        "                             SD3/FLUX): runs the last steps of the schedule (diffusers classes:\n"
        "                             int(steps * X) of them; --sampler: steps of a schedule of\n"
        "                             int(steps / X))\n"
        "      --mask MASK            inpainting (with --init-image): repaint where MASK is white (PNG/JPEG,\n"
        "                             luminance, grey = partly; or, when it has transparency, where it is\n"
        "                             opaque, as A1111), resized to the image; --strength defaults to the\n"
        "                             inpaint pipelines' (1.0 SD1.5, 0.9999 SDXL, 0.6 SD3/FLUX). Diffusers\n"
        "                             classes binarize it at 0.5 per latent cell; --sampler blends softly\n"
        "      --mask-invert          repaint where MASK is black instead\n"
        "      --mask-blur PX         blur the mask by a Gaussian of PX pixels first (A1111's mask_blur;\n"
        "                             default 0)\n"
        "      --mask-overlay         paste the init image back over the kept area after decoding (A1111's\n"
        "                             overlay: the original's share is 1 - min(2 x mask, 1), so unmasked\n"
        "                             pixels come back exactly)\n"
        "      --masked-content WHAT  what the masked area starts from (A1111's \"Masked content\"): original\n"
        "                             (default: the image), fill (painted with blurred colours from around\n"
        "                             it, as A1111), latent-noise (the seed's noise), latent-nothing (zeros)\n"
        "      --only-masked PX       inpaint only the masked area (A1111's \"Only masked\", padding PX):\n"
        "                             the mask's bounding box grown by PX pixels, then to the aspect of\n"
        "                             -W x -H (default: the model's native size), is generated at that\n"
        "                             size and pasted back into the init image (output: its size), the\n"
        "                             original over it where the mask keeps it\n"
        "  -q, --quiet                no progress output\n"
        "  -h, --help                 this help\n");
}

typedef struct { int quiet, tty; } progress_state;

static int on_progress(void *user, int step, int total, double elapsed) {
    progress_state *ps = user;
    if (ps->quiet) return 0;
    double per = elapsed / step, eta = per * (total - step);
    fprintf(stderr, "%sstep %d/%d  %.2f s/it  ETA %.0fs%s", ps->tty ? "\r" : "", step, total, per, eta,
            ps->tty ? (step == total ? "\n" : "") : "\n");
    fflush(stderr);
    return 0;
}

typedef struct { qd_ctx *ctx; const char *path; int warned; } preview_state;

/* Each preview replaces the file atomically, so a viewer never sees half a PNG. */
static void on_preview(void *user, int step, int total, const uint8_t *rgb, int width, int height) {
    preview_state *ps = user;
    if (qd_write_png(ps->ctx, ps->path, rgb, width, height, NULL, NULL, 0) != QD_OK && !ps->warned) {
        fprintf(stderr, "qdiff: warning: preview at step %d/%d: %s\n", step, total, qd_last_error(ps->ctx));
        ps->warned = 1;
    }
}

/* OUT.png -> OUT-k.png for batches. */
static void numbered(char *buf, size_t n, const char *path, int k, int batch) {
    if (batch <= 1) { snprintf(buf, n, "%s", path); return; }
    const char *dot = strrchr(path, '.'), *slash = strrchr(path, '/');
    if (!dot || (slash && dot < slash)) { snprintf(buf, n, "%s-%d", path, k); return; }
    snprintf(buf, n, "%.*s-%d%s", (int)(dot - path), path, k, dot);
}

/* --only-masked: the init image and mask files through cli_crop_setup. 0 set up, 1 the mask
 * is empty (said; the caller runs plain image-to-image of the whole picture, as A1111), -1
 * failed (said). */
static int only_masked_setup(qd_ctx *ctx, const qd_model *m, const char *init_path, const char *mask_path, int invert,
                             int blur, int pad, qd_gen_params *p, cli_crop *crop, float **init, float **mask) {
    uint8_t *rgb = NULL, *rgba = NULL, *g = NULL;
    int iw, ih, mw, mh, alpha = 0, rc = -1;
    char err[1024] = "";
    if (qd_read_image(ctx, init_path, &rgb, &iw, &ih) != QD_OK)
        fprintf(stderr, "qdiff: --init-image: %s\n", qd_last_error(ctx));
    else if (qd_read_image_rgba(ctx, mask_path, &rgba, &mw, &mh, &alpha) != QD_OK)
        fprintf(stderr, "qdiff: --mask: %s\n", qd_last_error(ctx));
    else if (cli_mask8(mask_path, rgba, mw, mh, alpha, 0, invert, blur, &g, err, sizeof err) ||
             (rc = cli_crop_setup(ctx, m, init_path, rgb, iw, ih, g, mw, mh, pad, p, crop, init, mask, err, sizeof err)) < 0)
        fprintf(stderr, "qdiff: %s\n", err);
    else if (rc == 1)
        fprintf(stderr, "qdiff: warning: %s is empty: --only-masked runs image-to-image of the whole picture (as A1111)\n",
                mask_path);
    if (rc != 0) free(rgb);   /* else crop holds it */
    free(rgba);
    free(g);
    return rc;
}

int cmd_generate(int argc, char **argv) {
    enum { O_STEPS = 256, O_CFG, O_SEED, O_SCHED, O_KARRAS, O_BATCH, O_LATENTS, O_RESCALE, O_SOPTS, O_GUIDANCE, O_MAXSEQ, O_MATMUL, O_PREVIEW,
           O_PREVIEW_VAE, O_PREVIEW_EVERY, O_PREVIEW_SIZE, O_SAMPLER, O_SCHEDULE, O_ETA, O_SOPT, O_NOISE, O_PRECISION, O_CONFIG_FROM, O_VAE_TILE, O_LORA,
           O_INIT_IMAGE, O_STRENGTH, O_MASK, O_MASK_INVERT, O_MASK_BLUR, O_MASK_OVERLAY, O_ONLY_MASKED, O_MASKED_CONTENT, O_RESIZE_MODE };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"prompt", required_argument, 0, 'p'},
        {"negative", required_argument, 0, 'n'}, {"output", required_argument, 0, 'o'},
        {"steps", required_argument, 0, O_STEPS}, {"cfg", required_argument, 0, O_CFG},
        {"seed", required_argument, 0, O_SEED}, {"width", required_argument, 0, 'W'},
        {"height", required_argument, 0, 'H'}, {"scheduler", required_argument, 0, O_SCHED},
        {"karras", no_argument, 0, O_KARRAS}, {"batch", required_argument, 0, O_BATCH},
        {"threads", required_argument, 0, 't'}, {"save-latents", required_argument, 0, O_LATENTS},
        {"guidance-rescale", required_argument, 0, O_RESCALE}, {"scheduler-options", required_argument, 0, O_SOPTS},
        {"guidance", required_argument, 0, O_GUIDANCE}, {"max-sequence-length", required_argument, 0, O_MAXSEQ},
        {"matmul", required_argument, 0, O_MATMUL}, {"preview", required_argument, 0, O_PREVIEW},
        {"preview-vae", required_argument, 0, O_PREVIEW_VAE}, {"preview-every", required_argument, 0, O_PREVIEW_EVERY},
        {"preview-size", required_argument, 0, O_PREVIEW_SIZE},
        {"sampler", required_argument, 0, O_SAMPLER}, {"schedule", required_argument, 0, O_SCHEDULE},
        {"eta", required_argument, 0, O_ETA}, {"scheduler-opt", required_argument, 0, O_SOPT},
        {"noise-mode", required_argument, 0, O_NOISE}, {"precision", required_argument, 0, O_PRECISION},
        {"config-from", required_argument, 0, O_CONFIG_FROM},
        {"vae-tile", required_argument, 0, O_VAE_TILE},
        {"lora", required_argument, 0, O_LORA},
        {"init-image", required_argument, 0, O_INIT_IMAGE}, {"strength", required_argument, 0, O_STRENGTH},
        {"mask", required_argument, 0, O_MASK}, {"mask-invert", no_argument, 0, O_MASK_INVERT},
        {"mask-blur", required_argument, 0, O_MASK_BLUR}, {"mask-overlay", no_argument, 0, O_MASK_OVERLAY},
        {"only-masked", required_argument, 0, O_ONLY_MASKED}, {"masked-content", required_argument, 0, O_MASKED_CONTENT},
        {"resize-mode", required_argument, 0, O_RESIZE_MODE},
        {"quiet", no_argument, 0, 'q'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    qd_gen_params p;
    qd_gen_params_default(&p);
    const char *model_dir = NULL, *out = NULL, *latents_path = NULL, *preview_path = NULL, *preview_vae_path = NULL;
    const char *config_from = NULL, *init_path = NULL, *mask_path = NULL;
    float *init_img = NULL, *mask = NULL;
    int mask_invert = 0, mask_overlay = 0;
    long mask_blur = 0, only_masked = -1;
    int resize_mode = CLI_RESIZE_JUST;
    cli_crop crop = {0};
    uint8_t *pasted = NULL;
    long threads = 0, v;
    int have_seed = 0, quiet = 0, matmul = QD_MATMUL_CONFIG, noise_mode_set = 0, precision;
    long vae_tile = -1;
    char sched_opts[8192] = "";   /* --scheduler-options / --scheduler-opt / --eta, as one JSON object */
    enum { MAX_LORAS = 32 };
    static char lora_buf[MAX_LORAS][4096];   /* --lora paths (no frees on the many early returns) */
    const char *lora_paths[MAX_LORAS];
    float lora_scales[MAX_LORAS];
    int n_loras = 0;
    int c;
    if (cli_default_precision(&precision)) return EXIT_BAD;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:p:n:o:W:H:t:qh", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case O_CONFIG_FROM: config_from = optarg; break;
        case 'p': p.prompt = optarg; break;
        case 'n': p.negative_prompt = optarg; break;
        case 'o': out = optarg; break;
        case O_STEPS: if (cli_parse_int(optarg, "--steps", 1, 10000, &v)) return EXIT_BAD; p.steps = (int)v; break;
        case O_CFG: if (cli_parse_float(optarg, "--cfg", &p.cfg_scale)) return EXIT_BAD; break;
        case O_GUIDANCE: if (cli_parse_float(optarg, "--guidance", &p.guidance)) return EXIT_BAD; break;
        case O_MAXSEQ:
            if (cli_parse_int(optarg, "--max-sequence-length", 1, 4096, &v)) return EXIT_BAD;
            p.max_sequence_length = (int)v;
            break;
        case O_PREVIEW: preview_path = optarg; break;
        case O_PREVIEW_VAE: preview_vae_path = optarg; break;
        case O_PREVIEW_SIZE:
            if (cli_parse_int(optarg, "--preview-size", 0, 1 << 20, &v)) return EXIT_BAD;
            p.preview_max_size = (int)v;
            break;
        case O_PREVIEW_EVERY:
            if (cli_parse_int(optarg, "--preview-every", 1, 10000, &v)) return EXIT_BAD;
            p.preview_every = (int)v;
            break;
        case O_MATMUL:
            if (!strcmp(optarg, "auto")) matmul = QD_MATMUL_CONFIG;
            else if (!strcmp(optarg, "exact")) matmul = QD_MATMUL_EXACT;
            else if (!strcmp(optarg, "int8")) matmul = QD_MATMUL_INT8;
            else {
                fprintf(stderr, "qdiff: --matmul expects auto, exact or int8, got '%s'\n", optarg);
                return EXIT_BAD;
            }
            break;
        case O_PRECISION: if (cli_parse_precision(optarg, "--precision", &precision)) return EXIT_BAD; break;
        case O_VAE_TILE: if (cli_parse_int(optarg, "--vae-tile", 0, 65536, &vae_tile)) return EXIT_BAD; break;
        case O_RESCALE: if (cli_parse_float(optarg, "--guidance-rescale", &p.guidance_rescale)) return EXIT_BAD; break;
        case O_SEED: {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(optarg, &end, 10);
            if (errno || *end || end == optarg || optarg[0] == '-') {
                fprintf(stderr, "qdiff: --seed expects a non-negative integer, got '%s'\n", optarg);
                return EXIT_BAD;
            }
            p.seed = s;
            have_seed = 1;
            break;
        }
        case 'W': if (cli_parse_int(optarg, "--width", 8, 16384, &v)) return EXIT_BAD; p.width = (int)v; break;
        case 'H': if (cli_parse_int(optarg, "--height", 8, 16384, &v)) return EXIT_BAD; p.height = (int)v; break;
        case O_SCHED: p.scheduler = optarg; break;
        case O_KARRAS: p.karras = 1; break;
        case O_SOPTS: case O_SOPT: case O_ETA:
            if (cli_scheduler_option(sched_opts, sizeof sched_opts, c == O_SOPTS ? "--scheduler-options"
                                     : c == O_SOPT ? "--scheduler-opt" : "--eta", optarg))
                return EXIT_BAD;
            break;
        case O_SAMPLER: p.sampler = optarg; break;
        case O_SCHEDULE: p.schedule = optarg; break;
        case O_NOISE:
            if (!strcmp(optarg, "comfyui")) p.noise_mode = QD_NOISE_COMFYUI;
            else if (!strcmp(optarg, "diffusers")) p.noise_mode = QD_NOISE_DIFFUSERS;
            else {
                fprintf(stderr, "qdiff: --noise-mode expects comfyui or diffusers, got '%s'\n", optarg);
                return EXIT_BAD;
            }
            noise_mode_set = 1;
            break;
        case O_BATCH: if (cli_parse_int(optarg, "--batch", 1, 64, &v)) return EXIT_BAD; p.batch = (int)v; break;
        case 't': if (cli_parse_int(optarg, "--threads", 1, 256, &threads)) return EXIT_BAD; break;
        case O_LATENTS: latents_path = optarg; break;
        case O_LORA: {
            char *lp;
            if (n_loras == MAX_LORAS) { fprintf(stderr, "qdiff: at most %d --lora options\n", MAX_LORAS); return EXIT_BAD; }
            if (cli_parse_lora(optarg, "--lora", &lp, &lora_scales[n_loras])) return EXIT_BAD;
            snprintf(lora_buf[n_loras], sizeof lora_buf[n_loras], "%s", lp);
            free(lp);
            lora_paths[n_loras] = lora_buf[n_loras];
            n_loras++;
            break;
        }
        case O_INIT_IMAGE: init_path = optarg; break;
        case O_MASK: mask_path = optarg; break;
        case O_MASK_INVERT: mask_invert = 1; break;
        case O_MASK_OVERLAY: mask_overlay = 1; break;
        case O_RESIZE_MODE:
            if ((resize_mode = cli_resize_mode_name(optarg)) < 0) {
                fprintf(stderr, "qdiff: --resize-mode expects just, crop or fill, got '%s'\n", optarg);
                return EXIT_BAD;
            }
            break;
        case O_MASKED_CONTENT:
            if ((p.masked_content = cli_masked_content(optarg)) < 0) {
                fprintf(stderr, "qdiff: --masked-content expects original, fill, latent-noise or latent-nothing, got '%s'\n",
                        optarg);
                return EXIT_BAD;
            }
            break;
        case O_ONLY_MASKED:
            if (cli_parse_int(optarg, "--only-masked", 0, 4096, &only_masked)) return EXIT_BAD;
            break;
        case O_MASK_BLUR: {
            char *end;
            errno = 0;
            mask_blur = strtol(optarg, &end, 10);
            if (errno || *end || end == optarg || mask_blur < 0 || mask_blur > 64) {
                fprintf(stderr, "qdiff: --mask-blur expects pixels 0..64, got '%s'\n", optarg);
                return EXIT_BAD;
            }
            break;
        }
        case O_STRENGTH: {
            char *end;
            errno = 0;
            double s = strtod(optarg, &end);   /* a double, as Python's strength */
            if (errno || *end || end == optarg || !(s > 0 && s <= 1)) {
                fprintf(stderr, "qdiff: --strength expects a number in (0, 1], got '%s'\n", optarg);
                return EXIT_BAD;
            }
            p.strength = s;
            break;
        }
        case 'q': quiet = 1; break;
        case 'h': usage_generate(stdout); return 0;
        default: usage_generate(stderr); return EXIT_BAD;
        }
    }
    if (optind < argc) { fprintf(stderr, "qdiff: unexpected argument '%s'\n", argv[optind]); return EXIT_BAD; }
    if (!model_dir || !p.prompt || !out) {
        fprintf(stderr, "qdiff: generate needs -m DIR, -p TEXT and -o OUT.png (see qdiff generate --help)\n");
        return EXIT_BAD;
    }
    if (!have_seed) p.seed = cli_random_seed();
    p.loras = lora_paths;
    p.lora_scales = lora_scales;
    p.n_loras = n_loras;
    if (sched_opts[0]) p.scheduler_options = sched_opts;
    if ((p.strength != 0 || resize_mode != CLI_RESIZE_JUST) && !init_path) {
        fprintf(stderr, "qdiff: --strength and --resize-mode go with --init-image\n");
        return EXIT_BAD;
    }
    if ((mask_path || mask_invert || mask_blur || mask_overlay) && !init_path) {
        fprintf(stderr, "qdiff: --mask (and --mask-invert, --mask-blur, --mask-overlay) go with --init-image: inpainting repaints part "
                "of that image\n");
        return EXIT_BAD;
    }
    if ((mask_invert || mask_blur || mask_overlay || only_masked >= 0 || p.masked_content) && !mask_path) {
        fprintf(stderr, "qdiff: --mask-invert, --mask-blur, --mask-overlay, --only-masked and --masked-content go with --mask\n");
        return EXIT_BAD;
    }
    if (p.sampler && (p.scheduler || p.karras == 1)) {
        fprintf(stderr, "qdiff: --sampler replaces --scheduler/--karras (use --schedule karras)\n");
        return EXIT_BAD;
    }
    if (!p.sampler && (p.schedule || noise_mode_set)) {
        fprintf(stderr, "qdiff: --schedule and --noise-mode go with --sampler\n");
        return EXIT_BAD;
    }
    if ((p.sampler && cli_check_name(QD_LIST_SAMPLERS, p.sampler, "--sampler")) ||
        (p.schedule && cli_check_name(QD_LIST_SCHEDULES, p.schedule, "--schedule")) ||
        (p.scheduler && cli_check_name(QD_LIST_SCHEDULER_CLASSES, p.scheduler, "--scheduler")))
        return EXIT_BAD;

    char path[4200];
    for (int k = 1; k <= p.batch; k++) {
        numbered(path, sizeof path, out, k, p.batch);
        if (cli_check_writable(path)) return EXIT_BAD;
    }
    if (latents_path && cli_check_writable(latents_path)) return EXIT_BAD;
    if (!preview_path != !preview_vae_path) {
        fprintf(stderr, "qdiff: --preview and --preview-vae go together\n");
        return EXIT_BAD;
    }
    if (preview_path && cli_check_writable(preview_path)) return EXIT_BAD;

    qd_ctx *ctx = qd_ctx_new((int)threads);
    if (!ctx) { fprintf(stderr, "qdiff: out of memory\n"); return EXIT_BAD; }
    qd_set_matmul(ctx, matmul);
    qd_set_precision(ctx, precision);
    qd_set_vae_tiling(ctx, (int)vae_tile, -1);
    qd_model *m = NULL;
    int rc = 0;
    uint8_t *img = NULL;
    float *lat = NULL;
    qd_vae_model *preview_vae = NULL;
    preview_state pv = {ctx, preview_path, 0};
    struct stat msb;
    int single_file = stat(model_dir, &msb) == 0 && S_ISREG(msb.st_mode);
    if (config_from && !single_file) {
        fprintf(stderr, "qdiff: %s: --config-from is for a single-file checkpoint given with -m\n", model_dir);
        rc = EXIT_BAD;
        goto done;
    }
    if ((single_file ? qd_model_open_single_file(ctx, model_dir, config_from, &m) : qd_model_open(ctx, model_dir, &m)) != QD_OK ||
        (preview_vae_path && qd_vae_open(ctx, preview_vae_path, &preview_vae) != QD_OK)) {
        fprintf(stderr, "qdiff: %s\n", qd_last_error(ctx));
        rc = EXIT_BAD;
        goto done;
    }
    if (preview_vae) {
        p.preview_vae = preview_vae;
        p.preview = on_preview;
        p.preview_user = &pv;
        if (p.preview_every == 0) p.preview_every = 1;
    }
    int cropped = only_masked >= 0 ? only_masked_setup(ctx, m, init_path, mask_path, mask_invert, (int)mask_blur,
                                                       (int)only_masked, &p, &crop, &init_img, &mask) : 1;
    if (cropped > 0 && only_masked >= 0) p.masked_content = QD_MASKED_ORIGINAL;   /* empty mask: no mask at all */
    if (cropped < 0 || (cropped > 0 && init_path && !init_img && cli_init_image(ctx, m, init_path, resize_mode, &p, &init_img)) ||
        (cropped > 0 && mask_path && only_masked < 0 && cli_mask(ctx, mask_path, mask_invert, (int)mask_blur, resize_mode, &p, &mask))) {
        rc = EXIT_BAD;
        goto done;
    }
    progress_state ps = {quiet, isatty(2)};
    p.progress = on_progress;
    p.progress_user = &ps;
    qd_gen_params_resolve(m, &p);
    int64_t shape[4];
    int ndim;
    size_t nlat = qd_latent_shape(m, &p, shape, &ndim);
    img = malloc(qd_image_size(m, &p, QD_IMAGE_RGB8));
    lat = latents_path ? malloc(sizeof(float) * nlat) : NULL;
    if (!img || (latents_path && !lat)) { fprintf(stderr, "qdiff: out of memory\n"); rc = EXIT_BAD; goto done; }
    qd_status st = qd_generate(ctx, m, &p, QD_IMAGE_RGB8, img, lat);
    if (st != QD_OK) {
        fprintf(stderr, "qdiff: %s\n", qd_last_error(ctx));
        rc = st == QD_ERR_CANCELLED ? 130 : EXIT_BAD;
        if (preview_path) remove(preview_path);   /* no output of a failed run stays behind */
        goto done;
    }
    int W = p.width, H = p.height;
    if (mask_overlay && !crop.orig && p.mask) cli_mask_overlay(img, p.batch, W, H, &p);
    if (crop.orig) {   /* "Only masked": the results go back into the init picture */
        char err[1024];
        if (cli_crop_paste(ctx, &crop, img, p.batch, W, H, &pasted, err, sizeof err)) {
            fprintf(stderr, "qdiff: %s\n", err);
            rc = EXIT_BAD;
            goto done;
        }
    }
    const char *mname = cli_model_name(model_dir);
    for (int k = 1; k <= p.batch; k++) {
        char params[8192];
        cli_params_text(params, sizeof params, m, mname, &p, k - 1, (int)mask_blur, crop.orig ? crop.pad : -1);
        const char *keys[] = {"parameters"};
        const char *vals[] = {params};
        numbered(path, sizeof path, out, k, p.batch);
        const uint8_t *pic = crop.orig ? pasted + (size_t)(k - 1) * (size_t)crop.iw * crop.ih * 3
                                       : img + (size_t)(k - 1) * (size_t)W * (size_t)H * 3;
        if (qd_write_png(ctx, path, pic, crop.orig ? crop.iw : W, crop.orig ? crop.ih : H, keys, vals, 1) != QD_OK) {
            fprintf(stderr, "qdiff: %s\n", qd_last_error(ctx));
            for (int j = 1; j < k; j++) { numbered(path, sizeof path, out, j, p.batch); remove(path); }
            rc = EXIT_BAD;
            goto done;
        }
        if (!quiet) fprintf(stderr, "wrote %s (seed %llu, %s)\n", path, (unsigned long long)p.seed, cli_precision_name(ctx));
    }
    if (latents_path && qd_write_tensor(ctx, latents_path, "latents", lat, shape, ndim) != QD_OK) {
        fprintf(stderr, "qdiff: %s\n", qd_last_error(ctx));
        rc = EXIT_BAD;
    }
done:
    free(pasted);
    cli_crop_free(&crop);
    free(init_img);
    free(mask);
    free(img);
    free(lat);
    qd_vae_close(preview_vae);
    qd_model_free(m);
    qd_ctx_free(ctx);
    return rc;
}

