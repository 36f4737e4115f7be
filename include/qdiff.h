/* qdiff: native inference for (quantized) diffusion models.
 *
 * One header, plain C. Typical use:
 *
 *   qd_ctx *ctx = qd_ctx_new(0);                      // 0 = all cores
 *   qd_model *m;
 *   if (qd_model_open(ctx, "path/to/diffusers-folder", &m) != QD_OK)
 *       fprintf(stderr, "%s\n", qd_last_error(ctx));
 *   qd_gen_params p; qd_gen_params_default(&p);
 *   p.prompt = "a red circle on a blue background";
 *   float *img = malloc(qd_image_size(&p, QD_IMAGE_F32));
 *   qd_generate(ctx, m, &p, QD_IMAGE_F32, img, NULL);   // NHWC float in [0,1]
 *
 * Every fallible call returns a qd_status; on failure qd_last_error() says what
 * went wrong, naming the file and tensor involved. The library never exits.
 */
#ifndef QDIFF_H
#define QDIFF_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QDIFF_VERSION "0.1.0"

typedef int qd_status;
enum {
    QD_OK = 0,
    QD_ERR_ARG = 1,         /* invalid argument from the caller */
    QD_ERR_IO = 2,          /* a file could not be opened, read or written */
    QD_ERR_FORMAT = 3,      /* a file's contents are malformed or inconsistent */
    QD_ERR_NOMEM = 4,
    QD_ERR_UNSUPPORTED = 5, /* valid input this version cannot handle */
    QD_ERR_CANCELLED = 6    /* qd_cancel() or the progress callback stopped the run */
};

typedef struct qd_ctx qd_ctx;
typedef struct qd_model qd_model;

/* ---- context ---------------------------------------------------------- */

enum { QD_LOG_ERROR = 0, QD_LOG_WARN = 1, QD_LOG_INFO = 2 };
typedef void (*qd_log_fn)(void *user, int level, const char *msg);

qd_ctx *qd_ctx_new(int n_threads);           /* n_threads <= 0: all online cores */
void qd_ctx_free(qd_ctx *ctx);
int qd_ctx_threads(const qd_ctx *ctx);
const char *qd_last_error(const qd_ctx *ctx);
void qd_set_log(qd_ctx *ctx, qd_log_fn fn, void *user);  /* default: warnings to stderr */
void qd_cancel(qd_ctx *ctx);                 /* thread-safe; the running call returns QD_ERR_CANCELLED */
/* How SDNQ-quantized layers multiply: as each model's config asks (default: sdnq's
 * quantized matmul for the layers use_quantized_matmul / use_quantized_matmul_conv
 * give it, over >= 32 tokens or output pixels), exact (dequantized tile by tile, fp32
 * math), or int8 quantized matmul (per-token int8 activations) wherever possible:
 * Linear layers and Conv layers (each output pixel's im2col row quantized per token;
 * not a Conv with kernel > 1x1 and a Hadamard rotation, which runs exact). */
enum { QD_MATMUL_CONFIG = 0, QD_MATMUL_EXACT = 1, QD_MATMUL_INT8 = 2 };
void qd_set_matmul(qd_ctx *ctx, int mode);
/* Arithmetic of the dense math (GEMM, convolution, attention):
 *   QD_PRECISION_FP32: float32 operands and accumulation, the reference semantics the
 *     golden tests use;
 *   QD_PRECISION_BF16: bfloat16 operands with float32 accumulation and statistics, where
 *     the CPU has AVX512_BF16 (elsewhere it runs as fp32);
 *   QD_PRECISION_AUTO: bf16 where the CPU has AVX512_BF16, else fp32.
 * The default is QD_PRECISION_AUTO. bf16 covers the GEMMs, convolutions and attention;
 * its error over whole runs (README "Precision", tests/test_pipeline_bf16.c): final
 * latents within 2.5e-2 relative L2 of diffusers' fp32 goldens, images >= 35 dB PSNR on
 * the trained test model. Quantizing (qd_quantize, qd_comfy_quantize) always computes
 * in fp32, whatever the context's precision. */
enum { QD_PRECISION_AUTO = 0, QD_PRECISION_FP32 = 1, QD_PRECISION_BF16 = 2 };
void qd_set_precision(qd_ctx *ctx, int precision);

/* ---- models ----------------------------------------------------------- */

/* Open a Hugging Face diffusers folder (model_index.json + component folders).
 * Weights are memory-mapped, not copied. */
qd_status qd_model_open(qd_ctx *ctx, const char *dir, qd_model **out);
/* Open a single-file checkpoint (SD1.x / SDXL original layout, FLUX.1 BFL/ComfyUI
 * layout; see qd_quantize) as a model: the components it holds take their weights
 * from it (converted names, views of the mapped file), everything else (configs,
 * tokenizers, scheduler, components it lacks) from config_from, a diffusers folder of
 * the same family (required). */
qd_status qd_model_open_single_file(qd_ctx *ctx, const char *file, const char *config_from, qd_model **out);
void qd_model_free(qd_model *model);
const char *qd_model_family(const qd_model *model);          /* "sd15", "sdxl", "sd3", "flux" */
const char *qd_model_scheduler(const qd_model *model);       /* the folder's scheduler class */
int qd_model_default_size(const qd_model *model);            /* native image side in pixels */
int qd_model_size_unit(const qd_model *model);               /* width and height must be multiples of this */

/* ---- generation -------------------------------------------------------- */

/* Return non-zero to cancel. step counts model evaluations done (1..total). */
typedef int (*qd_progress_fn)(void *user, int step, int total, double elapsed_seconds);

typedef struct {
    const char *prompt;
    const char *negative_prompt;    /* NULL: none (SDXL then uses zero embeddings); "" is encoded */
    int width, height;              /* 0: the model's native size */
    int steps;                      /* 0: the family's default (20 SD1.5/SDXL, 28 SD3/FLUX, 4 FLUX schnell) */
    float cfg_scale;                /* classifier-free guidance; < 0: the family's default (7.5 SD1.5,
                                       5 SDXL, 7 SD3, off for FLUX); <= 1 disables it */
    float guidance;                 /* FLUX.1-dev embedded guidance, default 3.5 (ignored elsewhere) */
    int max_sequence_length;        /* T5 tokens; 0: 256 (SD3, FLUX schnell) or 512 (FLUX dev) */
    float guidance_rescale;         /* default 0 (off) */
    uint64_t seed;                  /* torch.Generator('cpu').manual_seed(seed) */
    int batch;                      /* images per call, default 1 */
    const char *scheduler;          /* diffusers class name; NULL: the model's own */
    int karras;                     /* -1: as configured, 0 off, 1 use_karras_sigmas */
    const char *scheduler_options;  /* NULL or a JSON object of scheduler config overrides,
                                       e.g. {"prediction_type": "v_prediction"} (diffusers from_config kwargs) */
    qd_progress_fn progress;
    void *progress_user;
    /* Live previews: every preview_every model calls (0: never) the predicted clean image
     * of the first batch item, decoded with preview_vae (see qd_vae_open: normally the
     * family's TAESD), goes to preview(). The vae must match the model's latent channels. */
    struct qd_vae_model *preview_vae;
    int preview_every;
    void (*preview)(void *user, int step, int total, const uint8_t *rgb, int width, int height);
    void *preview_user;
    /* ComfyUI / k-diffusion sampling instead of a diffusers scheduler class. sampler:
     * a ComfyUI sampler name ("euler", "dpmpp_2m", "dpmpp_2m_sde", ...); NULL: the
     * diffusers class path (scheduler, karras). schedule: a ComfyUI scheduler name
     * ("normal", "karras", "simple", ...); NULL: "normal", or "simple" for flow
     * models. qd_list() names both. With a sampler, scheduler_options holds the
     * sampler and schedule parameters (eta, s_noise, s_churn, s_tmin, s_tmax, order,
     * r, sigma_min, sigma_max, rho, shift, ...) next to the diffusers config keys
     * that describe the model's noise (prediction_type, rescale_betas_zero_snr, ...). */
    const char *sampler;
    const char *schedule;
    /* Where a k-sampler's noise comes from (diffusers classes always draw all their
     * noise from one generator seeded with seed, in order):
     *   QD_NOISE_COMFYUI (0, the default), as ComfyUI on the CPU: the initial noise
     *     is torch.randn from manual_seed(seed), scaled by sqrt(1 + sigma0^2) for
     *     eps/v models at full noise (sigma0 otherwise, and for flow models); the
     *     per-step noise of ancestral and SDE samplers comes from a second generator
     *     seeded seed + 1; s_churn noise continues the first generator.
     *   QD_NOISE_DIFFUSERS: one generator for everything, in order (initial noise,
     *     then each step's), the initial noise scaled as diffusers' sigma-space
     *     schedulers do: sigma0, or sqrt(sigma0^2 + 1) when the folder's
     *     timestep_spacing is "leading".
     * The SDE samplers (dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde) get Brownian-motion
     * noise built from the per-step generator: the law of ComfyUI's torchsde
     * Brownian tree, not its values. */
    int noise_mode;
    /* Previews larger than this many pixels on the longer side are decoded from latents
     * box-averaged by the smallest integer factor that fits, so a preview costs a
     * fraction of a step (TAESD at 512x512 13-16% of an SD1.5 step, at 256x256 3-4%).
     * Default 256; 0: full size. */
    int preview_max_size;
    /* LoRAs for this call (n_loras files, lora_scales[i] each; NULL scales: 1). They are
     * added as W + scale * alpha/rank * up.down to the denoiser's and text encoders'
     * weights (dense, SDNQ or comfy_quant) without changing the loaded weights: the model
     * keeps the last list attached, so calls with the same list cost nothing more, another
     * list swaps them, and n_loras = 0 runs the model as loaded. Scale 0 skips a file.
     * Naming conventions and alpha as for qd_lora_set_open (kohya, diffusers, PEFT with
     * its adapter_config.json, BFL; FLUX fused qkv/linear1 split over to_q/to_k/to_v).
     * A file none of whose layers matches a weight is an error; partly matching ones are
     * warned about with counts. In int8 matmul mode an SDNQ layer a LoRA touches keeps
     * int8 where it runs as a plain linear (the LoRA added as a low-rank side path) and
     * runs the exact GEMM inside the UNet's fused projections. */
    const char *const *loras;
    const float *lora_scales;
    int n_loras;
    /* ---- image-to-image (appended; README "Image-to-image") ----
     * With init_image or init_latents set, qd_generate starts from that picture instead
     * of pure noise. init_image: float NHWC [init_count, height, width, 3] in [0,1]
     * (QD_IMAGE_F32's layout) at exactly the resolved width x height (resize first:
     * the CLI does). init_latents instead: [init_count, C, height/f, width/f] in the
     * model's latent space, (mean - shift_factor) * scaling_factor as qd_vae_encode_image
     * returns them (FLUX unpacked); no VAE encode then. init_count: 1 (shared by the
     * whole batch) or batch; 0 means 1.
     * strength (diffusers' name; ComfyUI's denoise) in (0, 1]: how much of the schedule
     * runs; 0: the diffusers pipeline's default (0.8 SD1.5, 0.3 SDXL, 0.6 SD3/FLUX).
     *   Diffusers classes (sampler NULL), as the *Img2ImgPipeline of each family: the
     *     image goes through vae.encode(...).latent_dist.sample(generator) (the seed's
     *     generator draws that noise first), is scaled/shifted, then
     *     t_start = steps - int(steps * strength) scheduler steps are skipped and the
     *     latents get scheduler.add_noise / scale_noise at the first remaining step with
     *     the next randn draw; steps - t_start model steps run.
     *   k-samplers (sampler set), as ComfyUI's VAEEncode + KSampler(denoise=strength):
     *     the encoder's mean (no sampling), the last steps+1 sigmas of a schedule of
     *     int(steps / strength) steps, x = latent + noise * sigma0 (eps/v; with the
     *     usual sqrt(1 + sigma0^2) at full denoise) or sigma0 * noise + (1 - sigma0) *
     *     latent (flow), noise as noise_mode says. */
    const float *init_image;
    const float *init_latents;
    int init_count;
    double strength;
    /* ---- inpainting (appended; README "Inpainting") ----
     * mask: float [H, W] (mask_count 0 or 1: one mask for every init image) or
     * [mask_count = init_count, H, W], row-major at the resolved width x height, values in
     * [0, 1], 1 = repaint, 0 = keep. Needs init_image or init_latents. strength 0 then
     * means the diffusers *InpaintPipeline default (1.0 SD1.5, 0.9999 SDXL, 0.6 SD3/FLUX).
     *   Diffusers classes, as StableDiffusion(XL|3)InpaintPipeline / FluxInpaintPipeline
     *     with an ordinary (4/16-channel) denoiser: the mask binarized at 0.5 and resized
     *     to the latent grid with nearest interpolation; start as image-to-image (at
     *     strength 1 SD1.5/SDXL start from pure noise * init_noise_sigma), then the
     *     masked image's encode draw; after each scheduler step
     *     latents = (1 - m) * add_noise(image_latents, noise, next step) + m * latents,
     *     with the image latents themselves after the last step (kept cells equal them
     *     exactly).
     *   k-samplers, as ComfyUI's KSampler with SetLatentNoiseMask: the mask resized
     *     bilinearly (soft); every model call sees x * m + noised(latent, sigma) * (1 - m)
     *     and its x0 becomes x0 * m + latent * (1 - m).
     *   9-channel inpainting UNets (a mask and init_image are required): the UNet input
     *     is cat([latents, mask, masked-image latents]). Diffusers classes: no blend; the
     *     image is encoded only at strength < 1. k-samplers: ComfyUI's
     *     InpaintModelConditioning (rounded mask) plus the noise-mask blend above
     *     (README "Inpainting"). */
    const float *mask;
    int mask_count;
    /* What the masked area starts from (appended; A1111's "Masked content"); needs a mask:
     *   QD_MASKED_ORIGINAL (0, the default): the image itself (A1111's inpainting_fill 1);
     *   QD_MASKED_FILL: its pixels painted with blurred colours from around them before the
     *     encode, as A1111's masking.fill (inpainting_fill 0; Pillow's arithmetic);
     *   QD_MASKED_LATENT_NOISE: the masked latent cells replaced by the run's initial noise
     *     (the seed's randn, A1111's inpainting_fill 2), then noised as usual;
     *   QD_MASKED_LATENT_NOTHING: the masked latent cells set to 0 (inpainting_fill 3).
     * A latent cell is masked where the path's latent mask (nearest for diffusers classes,
     * bilinear for k-samplers) is >= 0.5, as A1111 rounds its latent mask. */
    int masked_content;
} qd_gen_params;

enum { QD_MASKED_ORIGINAL = 0, QD_MASKED_FILL = 1, QD_MASKED_LATENT_NOISE = 2, QD_MASKED_LATENT_NOTHING = 3 };

enum { QD_NOISE_COMFYUI = 0, QD_NOISE_DIFFUSERS = 1 };

/* The names generate accepts: QD_LIST_SAMPLERS (qd_gen_params.sampler),
 * QD_LIST_SCHEDULES (.schedule), QD_LIST_SCHEDULER_CLASSES (.scheduler, the
 * diffusers classes). Returns the i-th name, NULL past the end; *about (if not
 * NULL) gets a one-line description. */
enum { QD_LIST_SAMPLERS = 0, QD_LIST_SCHEDULES = 1, QD_LIST_SCHEDULER_CLASSES = 2 };
const char *qd_list(int what, int i, const char **about);

void qd_gen_params_default(qd_gen_params *p);
/* Replace the "model default" values (0 size and steps, negative cfg, 0 strength of
 * an image-to-image call) by what the model will use, e.g. to record them in image
 * metadata. */
void qd_gen_params_resolve(const qd_model *model, qd_gen_params *p);

typedef enum {
    QD_IMAGE_F32 = 0,   /* float [batch, H, W, 3] in [0,1]: ComfyUI's IMAGE layout */
    QD_IMAGE_RGB8 = 1   /* uint8 [batch, H, W, 3], round(x * 255) */
} qd_image_format;

/* Image width and height these params give (0 in params means the model's native size). */
void qd_image_dims(const qd_model *model, const qd_gen_params *p, int *width, int *height);

/* Bytes the output buffer needs for these params (after defaults are applied). */
size_t qd_image_size(const qd_model *model, const qd_gen_params *p, qd_image_format fmt);

/* Shape of the final latents as diffusers returns them with output_type="latent":
 * [batch, C, H/8, W/8], or FLUX's packed [batch, (H/16)*(W/16), 4C] (*ndim = 3).
 * Returns the element count. ndim may be NULL. */
size_t qd_latent_shape(const qd_model *model, const qd_gen_params *p, int64_t shape[4], int *ndim);

/* Run text-to-image. `image` gets qd_image_size() bytes. `latents` may be NULL,
 * else it receives qd_latent_shape() floats: the final latents, before decoding. */
qd_status qd_generate(qd_ctx *ctx, qd_model *model, const qd_gen_params *p,
                      qd_image_format fmt, void *image, float *latents);

/* ---- files ------------------------------------------------------------- */

/* Write RGB8 pixels [H, W, 3] as PNG with optional tEXt chunks (keys[i], values[i]).
 * The file appears only when complete (written to a temporary name, then renamed). */
qd_status qd_write_png(qd_ctx *ctx, const char *path, const uint8_t *rgb, int width, int height,
                       const char *const *keys, const char *const *values, int n_text);

/* The same PNG in memory: *out (release it with qd_free) gets *out_len bytes. */
qd_status qd_encode_png(qd_ctx *ctx, const uint8_t *rgb, int width, int height,
                        const char *const *keys, const char *const *values, int n_text,
                        uint8_t **out, size_t *out_len);

/* Write one F32 tensor to a .safetensors file (atomically, as above). */
qd_status qd_write_tensor(qd_ctx *ctx, const char *path, const char *name,
                          const float *data, const int64_t *shape, int ndim);

/* ==== autoencoders on their own: encode, decode, live previews ============ */

/* A VAE opened by itself (not as part of a model folder):
 *   - a diffusers "vae" folder: config.json with _class_name AutoencoderKL (SD1.5, SDXL,
 *     SD3, FLUX.1 VAEs) or AutoencoderTiny (TAESD in diffusers layout);
 *   - a TAESD-family weight file, .safetensors or .pth (taesd, taesdxl, taesd3, taef1,
 *     taef2, taesana), holding an encoder, a decoder or both. Given "X_encoder.EXT"
 *     (or "X_decoder.EXT") the other half is loaded too when it sits beside it.
 * The architecture (latent channels, 8x/32x, variant) is read from the weights.
 * .pth files are read without executing their pickle (anything but tensors and
 * plain containers is refused).
 *
 * Latents are those the diffusion model works in, layout [B, C, H/f, W/f] float:
 * AutoencoderKL: (mean - shift_factor) * scaling_factor (deterministic, no sampling);
 * TAESD: the encoder's output as it is (TAESD works in that space directly). */
typedef struct qd_vae_model qd_vae_model;

typedef struct {
    int latent_channels;
    int downscale;              /* image side / latent side: 8, or 32 for taesana */
    int can_encode, can_decode; /* a TAESD file may hold only one half */
    const char *kind;           /* "AutoencoderKL", "taef2", "taesd/taesdxl", "taesd3/taef1", "taesana", ... */
} qd_vae_model_info;

qd_status qd_vae_open(qd_ctx *ctx, const char *path, qd_vae_model **out);
/* An explicit TAESD encoder/decoder pair; either path may be NULL. */
qd_status qd_vae_open_pair(qd_ctx *ctx, const char *encoder_path, const char *decoder_path, qd_vae_model **out);
void qd_vae_close(qd_vae_model *vae);
const qd_vae_model_info *qd_vae_describe(const qd_vae_model *vae);

/* image [batch, height, width, 3] in `fmt` (QD_IMAGE_F32 in [0,1] or QD_IMAGE_RGB8);
 * width and height multiples of downscale. latent gets batch*C*(height/f)*(width/f) floats. */
qd_status qd_vae_encode_image(qd_ctx *ctx, qd_vae_model *vae, qd_image_format fmt, const void *image,
                              int batch, int width, int height, float *latent);

/* latent [batch, C, latent_height, latent_width] -> image [batch, latent_height*f,
 * latent_width*f, 3] in `fmt`, clamped to [0,1] (RGB8: round(x * 255)). */
qd_status qd_vae_decode_latent(qd_ctx *ctx, qd_vae_model *vae, const float *latent, int batch,
                               int latent_width, int latent_height, qd_image_format fmt, void *image);

/* Live previews. The pipeline calls this from its step loop with the current latents
 * (e.g. every N steps) and hands the RGB8 picture to the user's callback or writes it.
 * `vae` is normally a TAESD decoder of the generating family's latent space (taesd for
 * SD1.5, taesdxl for SDXL, taesd3 for SD3, taef1 for FLUX.1, taef2 for FLUX.2); packed
 * (FLUX) latents must be unpacked to [batch, channels, h, w] first. Fails with
 * QD_ERR_ARG when `channels` is not the VAE's latent channel count (wrong family).
 * rgb gets batch * (h*f) * (w*f) * 3 bytes. Respects qd_cancel(). */
qd_status qd_preview_decode(qd_ctx *ctx, qd_vae_model *vae, const float *latents, int batch, int channels,
                            int latent_width, int latent_height, uint8_t *rgb);

/* Read a PNG or JPEG file (detected from its content) as RGB8 [height, width, 3]: gray,
 * palette, 16-bit and alpha (dropped) are converted. *rgb is malloc'd: free() it. */
qd_status qd_read_image(qd_ctx *ctx, const char *path, uint8_t **rgb, int *width, int *height);
/* The same from `len` bytes in memory (e.g. an upload); errors name `name`. */
qd_status qd_decode_image(qd_ctx *ctx, const char *name, const void *data, size_t len, uint8_t **rgb, int *width,
                          int *height);

/* The same as RGBA8 [height, width, 4] (alpha 255 where the file has none; *has_alpha,
 * if not NULL, says whether it had an alpha channel or tRNS): inpainting masks. */
qd_status qd_read_image_rgba(qd_ctx *ctx, const char *path, uint8_t **rgba, int *width, int *height, int *has_alpha);
qd_status qd_decode_image_rgba(qd_ctx *ctx, const char *name, const void *data, size_t len, uint8_t **rgba, int *width,
                               int *height, int *has_alpha);

/* Resize RGB8: area averaging when shrinking, bilinear between pixel centres when enlarging. */
qd_status qd_resize_rgb8(qd_ctx *ctx, const uint8_t *src, int src_width, int src_height,
                         uint8_t *dst, int dst_width, int dst_height);

/* Read one tensor of a .safetensors file as float32 (any float or integer dtype).
 * name NULL: the file's only tensor. *data is malloc'd: free() it. shape gets ndim dims (<= 8).
 * In a ComfyUI comfy_quant checkpoint, a quantized layer's name ("X" or "X.weight") reads
 * back its dequantized weight [out, in] (every layer's config is validated first). */
qd_status qd_read_tensor(qd_ctx *ctx, const char *path, const char *name, float **data,
                         int64_t shape[8], int *ndim);

/* ==== inspecting a model folder (what it holds; nothing is computed) ======= */

/* Describe a diffusers folder (every component model_index.json lists) or a single
 * component folder (config.json + weights) as a JSON document, *json_out (release
 * it with qd_free). Each SDNQ layer is opened as the loader opens it, so a folder
 * that would fail to load fails here with the same message. The document:
 *   { "path", "pipeline": class or null,
 *     "components": [ { "name", "library", "class", "path", "weights": bool,
 *        (with weights:) "files": [...], "quantization": null or {"method": "sdnq",
 *        "version", "config": file, "weights_dtype", "modules_to_not_convert": entries},
 *        "tensors", "parameters" (logical weights, quantization tensors excluded),
 *        "disk_bytes" (its safetensors files), "resident_bytes" = "mapped_bytes" (kept in
 *        the mapping) + "fp32_copy_bytes" (biases, norms, scales/SVD not stored as F32),
 *        "layers": {"quantized", "dense", "skipped" (weights in modules_to_not_convert),
 *                   "quantized_matmul", "svd", "hadamard", "codebook", "zero_point",
 *                   "transposed", "adjusted", "linear", "conv", "embedding"},
 *        "layer_types": [ {"label": e.g. "uint4 g32" / "int8 row-wise" / "bf16 dense",
 *                   "type", "grouping": "group"|"row-wise"|"tensor-wise"|"dense",
 *                   "group_size" (or null), "quantized", "codebook", "layers", "parameters"} ],
 *        "svd_ranks": [ {"rank", "layers"} ], "hadamard_sizes": [ {"size", "layers"} ] } ],
 *     "totals": { sizes, "layers", "layer_types" summed over the components } } */
qd_status qd_inspect(qd_ctx *ctx, const char *dir, char **json_out);

/* Release memory the library allocated for the caller (e.g. qd_inspect's JSON). */
void qd_free(void *p);

/* ---- quantize (SDNQ writer) --------------------------------------------- */

/* Called for every float weight ("*.weight", 2-D or more) of a chosen component
 * before it is quantized (or, for a layer that stays unquantized, before it is
 * stored again in its own dtype): w is the fp32 weight in its stored shape, to be
 * changed in place (e.g. a merged LoRA delta). Return 0 to go on; non-zero stops
 * the run with QD_ERR_CANCELLED unless the hook recorded its own error. */
typedef int (*qd_quant_prepare_fn)(void *user, const char *component, const char *tensor_name, float *w,
                                   const int64_t *shape, int ndim);
/* After every tensor: input bytes done of the total; non-zero return cancels. */
typedef int (*qd_quant_progress_fn)(void *user, int64_t done_bytes, int64_t total_bytes, const char *tensor,
                                    double elapsed_seconds);

/* Planning: called once per float layer weight of the chosen components, with the
 * name it has in the output (a single-file checkpoint's converted name), then once
 * with component == NULL when all are seen. Non-zero return stops the run before
 * anything is written (with the hook's error, if it recorded one). E.g. a LoRA set's
 * qd_lora_set_plan_tensor + qd_lora_set_check. */
typedef int (*qd_quant_plan_fn)(void *user, const char *component, const char *tensor_name, const int64_t *shape,
                                int ndim);

typedef struct {
    const char *components;         /* comma-separated component folders; NULL/"": the denoiser (unet/transformer) */
    const char *weights_dtype;      /* any SDNQ type (spec sdnq.md §1.5); default "int8" */
    const char *quantized_matmul_dtype;   /* NULL: sdnq's default for the weights dtype */
    int group_size;                 /* 0 auto, -1 row-wise, -2 tensor-wise, > 0 requested */
    int use_svd, svd_rank, svd_steps;               /* default off, 32, 8 */
    int use_hadamard, hadamard_group_size;          /* default off, 256 */
    int use_codebook, codebook_steps;               /* default off, 24 (unsigned ints only) */
    int use_quantized_matmul, use_quantized_matmul_conv;   /* storage layout for quantized matmul */
    int quant_conv, quant_embedding;                /* also quantize Conv / Embedding layers */
    int dynamic;                    /* per-layer type escalation (spec §2 step 11) */
    double dynamic_loss;            /* its threshold; < 0: 10^(-bits/2) */
    long min_numel, min_channels;   /* layers smaller than this stay unquantized: 16384, 32 */
    int default_skips;              /* apply sdnq's per-class skip lists (default 1) */
    const char *const *skip;        /* extra skip patterns (sdnq name rules) */
    int n_skip;
    const char *const *dtype_for;   /* "PATTERN=TYPE": per-layer weights dtype */
    int n_dtype_for;
    const char *layer_config;       /* per-layer JSON as written by template_path, or NULL */
    const char *template_path;      /* write the per-layer JSON here, or NULL */
    int dry_run;                    /* quantize and measure only: nothing is written but the template */
    int force;                      /* replace an existing output folder */
    uint64_t seed;                  /* SVD start vectors (default 0) */
    qd_quant_prepare_fn prepare;
    void *prepare_user;
    qd_quant_progress_fn progress;
    void *progress_user;
    /* ---- single-file checkpoints (appended) ---- */
    const char *config_from;        /* in_dir is a .safetensors checkpoint: a diffusers folder of the same family
                                       giving component configs, tokenizers, scheduler, model_index.json and the
                                       components the file lacks; NULL: configs inferred (see qd_quantize) */
    qd_quant_plan_fn plan;          /* NULL, or called during planning, before anything is written */
    void *plan_user;
} qd_quant_params;

void qd_quant_params_default(qd_quant_params *p);

/* Quantize a diffusers folder into an SDNQ diffusers folder at out_dir, as sdnq
 * writes one: the chosen components' layers quantized tensor by tensor from the
 * mapped input (memory: a few of the largest tensors), config.json and
 * quantization_config.json with sdnq's quantization_config, the other components
 * hard-linked or copied unchanged. The folder is built at out_dir.tmp-XXXXXX and
 * renamed at the end; an existing out_dir is refused unless p->force. out_dir may
 * be NULL with p->dry_run. *report_json (may be NULL; release with qd_free):
 *   {"input", "output", "dry_run", "components": [ {"name", "class", "quantized",
 *     "skipped", "bytes_in", "bytes_out", "rel_error", "snr_db", "layers": [ {"name",
 *     "class", "shape", "dtype", "grouping", "group_size", "svd_rank", "hadamard",
 *     "codebook", "transposed", "bytes_in", "bytes_out", "rel_error", "snr_db", "loss"}
 *     or {"name", "shape", "skipped": reason, "bytes_in"} ] } ], "totals": {...} }
 * rel_error = ||W - dequant(W)|| / ||W|| over the layer (totals: over all quantized
 * layers), snr_db = -20 log10(rel_error).
 * in_dir may instead be a single-file .safetensors checkpoint (SD1.x / SDXL in the
 * original LDM layout, FLUX.1 in the BFL/ComfyUI layout; whole or denoiser only):
 * its tensors get their diffusers names (fused q/k/v split by rows, VAE 1x1
 * attention convs as Linear, ...) and the output is the folder the equivalent
 * diffusers folder gives. Configs, tokenizers, scheduler, model_index.json and
 * components the file lacks come from p->config_from; without it the component
 * configs are inferred from the shapes plus the family's released defaults, the
 * family's model_index.json and scheduler are written, and the report's "missing"
 * lists what the folder still lacks (tokenizers, absent components). The report then
 * also has "single_file_family" and "config_from". An unknown family or a tensor
 * with no diffusers name is an error naming the file and the first such tensors. */
qd_status qd_quantize(qd_ctx *ctx, const char *in_dir, const char *out_dir, const qd_quant_params *p,
                      char **report_json);

/* ==== ABI checks for bindings ============================================= */

/* sizeof(qd_gen_params) in this build of the library. Bindings that mirror the struct
 * (ctypes, cffi) compare it with their own layout and refuse to run on a mismatch. */
size_t qd_gen_params_size(void);

/* ==== LoRA merging and ComfyUI comfy_quant checkpoints ======================= */

/* LoRA files merged into weights before quantizing: W += scale_f * dampen^i * alpha/rank
 * * up.down for every pair naming W (i: the pair's position among the pairs applied to W,
 * in file order). kohya (lora_unet_/lora_te1_/lora_te2_/lora_transformer_ + .lora_down/
 * .lora_up/.alpha), diffusers (unet./transformer./text_encoder[_2]. + .lora.down/.lora.up
 * or .lora_A/.lora_B), PEFT (base_model.model.; alpha and r from the adapter_config.json
 * beside the file, with rank_pattern/alpha_pattern and use_rslora: alpha/sqrt(r)) and
 * BFL/ComfyUI (diffusion_model.) names; FLUX fused qkv/linear1 and separate to_q/to_k/to_v
 * meet by row slices in both directions; SDXL kohya files with the original (LDM) UNet
 * names (lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q, ..._op, time_embed_0,
 * label_emb_0_0, out_2) match diffusers UNet weights by the single-file LDM map (2 resnets
 * per level, as in every SD1.x/SDXL UNet) and LDM-named weights as they are; linear and
 * conv LoRAs. Details: src/convert/lora.h.
 * Generation-time LoRAs (without merging): qd_gen_params.loras. */
typedef struct qd_lora_set qd_lora_set;

/* scales: one per file (NULL: all 1). dampen in (0, 1] (1: none). Errors name the file. */
qd_status qd_lora_set_open(qd_ctx *ctx, const char *const *paths, const float *scales, int n, float dampen,
                           qd_lora_set **out);
/* Add the deltas of the pairs naming `tensor_name` to the fp32 weight w ([out, in] or
 * [out, in, kh, kw]). component: "unet", "transformer", "text_encoder", "text_encoder_2",
 * "text_encoder_3" for a diffusers name inside that component; NULL for a name of a
 * single-file checkpoint (model.diffusion_model., cond_stage_model., ... or bare).
 * Returns the number of pairs applied, or -1 with the error in ctx (shape mismatch). */
int qd_lora_apply(qd_ctx *ctx, qd_lora_set *set, const char *component, const char *tensor_name,
                  float *w, const int64_t *shape, int ndim);
/* Before merging: note which pairs name a float weight (".weight", 2-D or more) of
 * `weights` (a .safetensors file, a shard index or a diffusers component folder; component
 * as for qd_lora_apply), so qd_lora_set_check can refuse a LoRA before anything is written. */
qd_status qd_lora_set_plan(qd_ctx *ctx, qd_lora_set *set, const char *weights, const char *component);
/* The same for one float weight named `tensor_name` of `component` with its shape (e.g. from a
 * qd_quant_params plan hook, which sees a single-file checkpoint's converted names). */
void qd_lora_set_plan_tensor(qd_lora_set *set, const char *component, const char *tensor_name, const int64_t *shape,
                             int ndim);
/* Pairs applied at least once so far, and pairs in all files. */
void qd_lora_set_report(const qd_lora_set *set, int64_t *matched, int64_t *total);
/* An error when some file has no pair that was applied or planned ("0 of its N LoRA layers
 * matched"), a warning when only some of its pairs were. */
qd_status qd_lora_set_check(qd_ctx *ctx, const qd_lora_set *set);
void qd_lora_set_free(qd_lora_set *set);

/* Write a ComfyUI comfy_quant checkpoint (docs: README "comfy_quant checkpoints"). */
typedef struct {
    const char *weights_dtype;      /* "int8_tensorwise" (default), "float8_e4m3fn", "float8_e4m3fn_rowwise" */
    int convrot;                    /* int8_tensorwise: Hadamard-rotated K-groups, per-row scales */
    int convrot_group;              /* 0: 256; a power of 4 from 4 to 4096 (smaller per layer where it must divide K) */
    int input_scale;                /* fp8: also write <layer>.input_scale = 1.0 */
    int full_precision_mm;          /* "full_precision_matrix_mult": true in every config */
    int save_quant_metadata;        /* also __metadata__._quantization_metadata */
    const char *const *filters;     /* convert_to_quant model filter presets (flux2, qwen, ...) */
    int n_filters;
    const char *const *exclude;     /* extended regexes searched in layer names: kept unquantized */
    int n_exclude;
    qd_lora_set *lora;              /* merged first; NULL: none */
    int dry_run;                    /* quantize and measure only, write nothing */
    int force;                      /* replace an existing output file */
    qd_quant_progress_fn progress;  /* after every input tensor; non-zero return cancels */
    void *progress_user;
} qd_comfy_quant_params;

void qd_comfy_quant_params_default(qd_comfy_quant_params *p);

/* Quantize the 2-D linear weights of a single-file .safetensors checkpoint (any float
 * dtype) round-to-nearest into out_path: <layer>.comfy_quant (JSON), .weight, .weight_scale
 * as ComfyUI and convert_to_quant write them; everything else copied (LoRA-merged first if
 * a LoRA names it); input metadata kept. Streams tensor by tensor into a temporary file
 * renamed at the end; an existing out_path is refused unless p->force. out_path may be
 * NULL with p->dry_run. *report_json (may be NULL; release with qd_free):
 *   {"input", "output", "format": "comfy_quant", "weights_dtype", "dry_run",
 *    "layers": [ {"name", "shape", "format", "convrot", "bytes_in", "bytes_out",
 *                 "rel_error", "snr_db"} or {"name", "shape", "skipped": reason, "bytes_in"} ],
 *    "totals": {"quantized", "copied", "lora_merged", "bytes_in", "bytes_out", "rel_error", "snr_db"}}
 * rel_error = ||W - dequant(W)|| / ||W|| (totals: over all quantized layers). */
qd_status qd_comfy_quantize(qd_ctx *ctx, const char *in_path, const char *out_path, const qd_comfy_quant_params *p,
                            char **report_json);

/* ==== precision in effect ================================================= */

/* The precision the context's dense math runs in on this CPU after qd_set_precision
 * (AUTO resolved): QD_PRECISION_FP32 or QD_PRECISION_BF16. */
int qd_ctx_precision(const qd_ctx *ctx);

/* ==== tiled VAE decode / encode ============================================ */

/* AutoencoderKL decodes (and encodes) large images in overlapping tiles so memory stays
 * bounded: each tile of tile_px x tile_px image pixels is decoded from its latent window
 * and neighbouring tiles are blended linearly across overlap_px pixels. Affects
 * qd_vae_decode_latent / qd_vae_encode_image and the pipelines' final decode.
 *   tile_px  -1: automatic (the default): tiles of 512 px when the image has more
 *                than 1024 x 1024 pixels, else one pass;
 *             0: never tile;
 *            >0: tile whenever the image is larger than tile_px on a side (rounded down
 *                to a multiple of the VAE's downscale, at least 4 latent pixels).
 *   overlap_px -1: the default (64 px, a quarter of the tile at most); else pixels shared
 *              by neighbouring tiles (rounded down to the downscale, clamped to half a tile).
 * Tiles see less context than the whole image: results differ from the one-pass decode
 * slightly near tile seams (see README "Tiled VAE"). TAESD models are never tiled. */
void qd_set_vae_tiling(qd_ctx *ctx, int tile_px, int overlap_px);

/* ==== thread pool polling ================================================== */

/* After a parallel step, the context's worker threads poll for the next one for up to
 * `microseconds` before they block (and the calling thread polls for their end the
 * same way), so steps issued back to back skip the ~25-30 us it can take to wake a
 * thread whose CPU went idle. An idle pool stops polling after one window; a thread
 * that finds another process needs its CPU stops polling for a while (2 ms, doubling
 * up to 256 ms while that repeats within a second). 0 turns polling off (every
 * hand-off blocks); < 0 restores the default: the environment variable
 * QD_THREAD_SPIN_US when set, else 200 (0 when the context has more threads than the
 * process has CPUs). At most 100000. No effect on a one-thread context. */
void qd_set_thread_spin(qd_ctx *ctx, int microseconds);

#ifdef __cplusplus
}
#endif
#endif
