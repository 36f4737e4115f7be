/* Shared pieces of the qdiff command line: each subcommand is cmd_<name>(). */
#ifndef QD_TOOLS_CLI_H
#define QD_TOOLS_CLI_H

#include <stdio.h>
#include <cjson/cJSON.h>
#include "qdiff.h"

#define EXIT_BAD 2

/* Members of a JSON report (qd_quantize's): the number or string at key; NAN or NULL
 * when it is missing or of another type. */
double cli_jnum(const cJSON *o, const char *key);
const char *cli_jstr(const cJSON *o, const char *key);

int cmd_generate(int argc, char **argv);
int cmd_vae(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_samplers(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_serve(int argc, char **argv);

/* qdiff quantize: the output format and LoRA option group (quantize_comfy.c). */
#define QUANTIZE_EXTRA_MAX 64
typedef struct {
    const char *format;             /* "sdnq" (default) or "comfy_quant" */
    const char *out;                /* -o / --output */
    const char *comfy_only;         /* the first comfy_quant-only option given (for errors) */
    qd_comfy_quant_params cq;
    const char *filters[QUANTIZE_EXTRA_MAX], *exclude[QUANTIZE_EXTRA_MAX];
    const char *lora_paths[QUANTIZE_EXTRA_MAX];   /* malloc'd */
    float lora_scales[QUANTIZE_EXTRA_MAX];
    int n_lora;
    float dampen;
    qd_lora_set *lora;
    qd_ctx *ctx;                    /* for quantize_extra_prepare */
} quantize_extra;
void quantize_extra_init(quantize_extra *e);
void quantize_extra_usage(FILE *f);
/* 1 consumed (with *i advanced past its value), 0 not one of ours, -1 bad value (printed). */
int quantize_extra_option(quantize_extra *e, int argc, char **argv, int *i);
qd_status quantize_extra_open_loras(qd_ctx *ctx, quantize_extra *e);
/* qd_quant_params.prepare: merges the LoRAs (user = the quantize_extra). */
int quantize_extra_prepare(void *user, const char *component, const char *tensor_name, float *w,
                           const int64_t *shape, int ndim);
/* A --format comfy_quant run: report printed, exit status returned. */
int quantize_comfy_run(qd_ctx *ctx, quantize_extra *e, const char *in, const char *out, const char *weights_dtype,
                       int dry_run, int force, int json, qd_quant_progress_fn progress, void *progress_user);
void quantize_extra_free(quantize_extra *e);

/* Parse a whole-string integer in [lo, hi] / a finite float; print why not and return -1. */
int cli_parse_int(const char *s, const char *opt, long lo, long hi, long *out);
int cli_parse_float(const char *s, const char *opt, float *out);
/* --precision: fp32, bf16 or auto into *out (QD_PRECISION_*); else print why (naming
 * opt) and return -1. The default: $QD_PRECISION when set (a bad value fails the same
 * way), else auto (bf16 where the CPU has AVX512_BF16). */
int cli_parse_precision(const char *s, const char *opt, int *out);
int cli_default_precision(int *out);
/* "bf16" or "fp32": what the context's dense math runs in (auto resolved). */
const char *cli_precision_name(const qd_ctx *ctx);
/* "FILE[:SCALE]" (the part after the last ':' is the scale when it is a number; default 1):
 * *path gets a malloc'd copy of FILE. 0 ok, -1 after printing what is wrong. */
int cli_parse_lora(const char *s, const char *opt, char **path, float *scale);
/* Fail before a long run, not after it, when `path` cannot be created. */
int cli_check_writable(const char *path);

/* A sampler / schedule / scheduler class name (what: QD_LIST_*) generate accepts;
 * else print the valid ones and return -1. */
int cli_check_name(int what, const char *name, const char *opt);
/* Fold one of generate's scheduler options into the JSON object text buf (cap
 * bytes, "" = {}): --scheduler-options J merges J's keys, --scheduler-opt KEY=VALUE
 * sets one (VALUE as JSON when it is a JSON scalar such as 0.5, true, null or
 * "text", else as a string), --eta X sets "eta". Later settings win. Prints why
 * and returns -1 on bad input. */
int cli_scheduler_option(char *buf, size_t cap, const char *opt, const char *arg);

/* A1111's img2img resize modes (resize_mode.c): CLI_RESIZE_JUST stretches, CLI_RESIZE_CROP
 * scales to cover and cuts the overflow (centred), CLI_RESIZE_FILL scales to fit and fills
 * the margins by stretching the edges. src (sw x sh RGB8) into dst (dw x dh). 0, or -1 with
 * the reason in err. cli_resize_mode_name: "just", "crop", "fill" -> the mode, else -1. */
enum { CLI_RESIZE_JUST = 0, CLI_RESIZE_CROP = 1, CLI_RESIZE_FILL = 2 };
int cli_resize_mode(qd_ctx *ctx, const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh, int mode, char *err,
                    size_t errn);
int cli_resize_mode_name(const char *name);

/* Image-to-image input (init_image.c): the RGB8 picture `name` (iw x ih) resized (mode:
 * CLI_RESIZE_*) to p's width x height (a side left 0 takes the image's own, rounded down
 * to the model's multiple of 8 or 16) as float NHWC [0,1] in *out (free it), set as
 * p->init_image. 0 ok, -1 with the reason in err. cli_init_image reads the PNG/JPEG file
 * first and prints the reason. */
int cli_init_image_rgb(qd_ctx *ctx, const qd_model *m, const char *name, uint8_t *rgb, int iw, int ih, int mode,
                       qd_gen_params *p, float **out, char *err, size_t errn);
int cli_init_image(qd_ctx *ctx, const qd_model *m, const char *path, int mode, qd_gen_params *p, float **out);
/* 0 when width x height is a size this model generates, else -1 with the reason in err. */
int cli_check_size(const qd_model *m, const char *name, int width, int height, char *err, size_t errn);

/* Inpainting mask (mask_image.c): the RGBA8 picture `name` (iw x ih) as float [H, W] in
 * [0, 1] at p's (already set) width x height, set as p->mask: its alpha when not all
 * opaque (> 128 = repaint, A1111's create_binary_mask), else its luminance (white =
 * repaint); alpha_repaint: OpenAI's rule instead (fully transparent = repaint); invert
 * (A1111's inpainting_mask_invert), then a Gaussian blur of `blur` pixels (A1111's
 * mask_blur, cv2.GaussianBlur), then the resize. *out: free it. 0 ok, -1 with the reason
 * in err. cli_mask reads the file first and prints the reason. */
int cli_mask_rgba(qd_ctx *ctx, const char *name, const uint8_t *rgba, int iw, int ih, int has_alpha, int alpha_repaint,
                  int invert, int blur, int mode, qd_gen_params *p, float **out, char *err, size_t errn);
int cli_mask(qd_ctx *ctx, const char *path, int invert, int blur, int mode, qd_gen_params *p, float **out);
/* Its two halves: the 8-bit mask (255 = repaint) at the picture's own size after the
 * binary/alpha rule, invert and blur (*out: free it); and an 8-bit mask of iw x ih made
 * the float p->mask at p's size, resized in mode (CLI_RESIZE_*, as the init image) (*out:
 * free it). 0 ok, -1 with the reason in err. The mask is resized as the init image is. */
int cli_mask8(const char *name, const uint8_t *rgba, int iw, int ih, int has_alpha, int alpha_repaint, int invert,
              int blur, uint8_t **out, char *err, size_t errn);
int cli_mask_from8(qd_ctx *ctx, const char *name, const uint8_t *g, int iw, int ih, int mode, qd_gen_params *p,
                   float **out, char *err, size_t errn);
/* An 8-bit grey picture w x h resized to dw x dh in mode (CLI_RESIZE_*). 0, or -1 with the
 * reason in err. */
int cli_resize_gray8(qd_ctx *ctx, const uint8_t *g, int w, int h, uint8_t *dst, int dw, int dh, int mode, char *err,
                     size_t errn);
/* out = orig * share + out * (255 - share), / 255 rounded, for one RGB8 pixel: A1111's
 * alpha composite of the original over a result (share: the original's alpha, 0..255). */
void cli_blend_original(uint8_t *out, const uint8_t *orig, int share);

/* A1111's overlay after an inpainting run: the init image pasted back over the kept area
 * of each of `n` generated pictures (RGB8, w x h), with alpha 1 - min(2 x mask, 1) on the
 * 8-bit mask (its mask_for_overlay): where the mask is 0 the original pixels return
 * exactly, where it is >= 0.5 the generated ones stay. init [init_count, h, w, 3] and mask
 * [mask_count, h, w] in [0, 1] as p holds them (one per picture, or one for all). */
void cli_mask_overlay(uint8_t *rgb, int n, int w, int h, const qd_gen_params *p);

/* A1111's "Inpaint area: Only masked" (inpaint_full_res, mask_crop.c): the mask's bounding
 * box, grown by `pad` pixels and then to the aspect of the output size, is cut from the init
 * image and the mask and generated at p's width x height; cli_crop_paste puts each result
 * back, resized to the box, into the init image at its own size, with the original over it
 * where the mask keeps it (alpha 1 - mask on the 8-bit, blurred mask). */
typedef struct {
    int x, y, w, h;        /* the box in the init image */
    int iw, ih;            /* the init image's size: the output size */
    int pad;               /* A1111's inpaint_full_res_padding */
    uint8_t *orig;         /* the init image, RGB8 iw x ih */
    uint8_t *mask8;        /* the processed mask at iw x ih (255 = repaint) */
} cli_crop;

/* Set up *c and p's init_image and mask (*init_out, *mask_out: free them) from the init
 * picture rgb (iw x ih, taken over: freed by cli_crop_free) and the 8-bit mask g (gw x gh,
 * resized to the picture when it differs). A side of p left 0 takes the model's native size.
 * Returns 0 ok, 1 when the mask is empty (nothing set up: A1111 then runs plain image-to-
 * image; rgb is still the caller's), -1 with the reason in err. */
int cli_crop_setup(qd_ctx *ctx, const qd_model *m, const char *name, uint8_t *rgb, int iw, int ih, const uint8_t *g,
                   int gw, int gh, int pad, qd_gen_params *p, cli_crop *c, float **init_out, float **mask_out,
                   char *err, size_t errn);
/* n results (RGB8, p's width x height each, back to back) into *out: n pictures of
 * c->iw x c->ih (free it). 0, or -1 with the reason in err. */
int cli_crop_paste(qd_ctx *ctx, const cli_crop *c, const uint8_t *gen, int n, int width, int height, uint8_t **out,
                   char *err, size_t errn);
void cli_crop_free(cli_crop *c);

/* A random seed that fits in 32 bits, as A1111 draws them. */
uint64_t cli_random_seed(void);
/* The last component of a model folder path (per-thread buffer). */
const char *cli_model_name(const char *dir);
/* The k-sampler's schedule as generate records it (NULL without a sampler). */
const char *cli_schedule_label(const qd_model *m, const qd_gen_params *p);
/* --masked-content's names: original, fill, latent-noise, latent-nothing -> QD_MASKED_*; -1
 * for anything else. */
int cli_masked_content(const char *name);
/* The A1111 "parameters" text of one image of a resolved (qd_gen_params_resolve) run;
 * mask_blur: the blur applied to p->mask (A1111's "Mask blur", written with a mask);
 * crop_pad >= 0: an "Only masked" run with that padding (A1111's "Inpaint area"). */
void cli_params_text(char *buf, size_t n, const qd_model *m, const char *model_name, const qd_gen_params *p,
                     int batch_pos, int mask_blur, int crop_pad);

#endif
