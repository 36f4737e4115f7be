/* Noise schedulers with diffusers 0.32.2 semantics.
 *
 * A scheduler is built from a model folder's scheduler_config.json the way
 * diffusers' Class.from_config(config, **overrides) builds it: keys present in
 * the JSON (and accepted by the class) carry over, missing keys take the class
 * defaults, overrides win. Schedules (betas, alphas_cumprod, sigmas,
 * timesteps) are computed in the precision diffusers uses (float32 torch
 * tensors, float64 numpy), so timesteps match exactly and sigmas to float32.
 *
 * Use, as diffusers' StableDiffusionPipeline does:
 *   qd_scheduler_set_timesteps(ctx, s, steps);
 *   latents = randn(...) * qd_scheduler_init_noise_sigma(s);
 *   for (i = 0; i < qd_scheduler_len(s); i++) {
 *       x = latents; qd_scheduler_scale_model_input(s, i, x, n);
 *       eps = unet(x, qd_scheduler_timestep(s, i)); ... guidance ...
 *       qd_scheduler_step(ctx, s, i, eps, latents, batch, per_item, rng);
 *   }
 * step() must be called for i = 0, 1, 2, ... in order (multistep and
 * second-order classes keep state between calls). */
#ifndef QD_SAMPLE_SCHEDULER_H
#define QD_SAMPLE_SCHEDULER_H

#include <math.h>
#include <stdint.h>
#include <cjson/cJSON.h>
#include "base/ctx.h"
#include "base/rng.h"

typedef struct qd_scheduler qd_scheduler;

/* config: parsed scheduler_config.json. class_name: NULL = the config's
 * "_class_name". overrides: cJSON object of kwargs applied on top, may be NULL.
 * Unknown class name -> QD_ERR_UNSUPPORTED naming the known ones. */
qd_status qd_scheduler_new(qd_ctx *ctx, const cJSON *config, const char *class_name,
                           const cJSON *overrides, qd_scheduler **out);
void qd_scheduler_free(qd_scheduler *s);
const char *qd_scheduler_class(const qd_scheduler *s);
const char *qd_scheduler_prediction_type(const qd_scheduler *s);

/* Names of all supported classes, NULL-terminated. */
const char *const *qd_scheduler_classes(void);

qd_status qd_scheduler_set_timesteps(qd_ctx *ctx, qd_scheduler *s, int num_inference_steps);
/* Flow-matching classes: 1, and the config's dynamic-shift parameters (for the
 * pipeline's calculate_shift). 0 for noise-prediction classes. */
int qd_scheduler_is_flow(const qd_scheduler *s, int *dynamic, int *base_seq, int *max_seq,
                         double *base_shift, double *max_shift);
/* Before set_timesteps of a flow class: mu for dynamic shifting, and/or explicit
 * sigmas (n values, as FluxPipeline passes np.linspace(1, 1/n, n)); sigmas may be NULL. */
qd_status qd_scheduler_set_flow_inputs(qd_ctx *ctx, qd_scheduler *s, int has_mu, double mu,
                                       const float *sigmas, int n);
int qd_scheduler_len(const qd_scheduler *s);                 /* model calls = len(timesteps) */
float qd_scheduler_timestep(const qd_scheduler *s, int i);   /* timesteps[i], passed to the UNet */
float qd_scheduler_init_noise_sigma(const qd_scheduler *s);
/* sigmas as the class keeps them (may be NULL for classes without sigmas). */
const float *qd_scheduler_sigmas(const qd_scheduler *s, int *n);
/* alphas_cumprod [num_train_timesteps], float32 as torch computes it. */
const float *qd_scheduler_alphas_cumprod(const qd_scheduler *s, int *n);

/* Noise level of model call i: the sigma the sigma-space classes scale by,
 * else sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t]) for t = timesteps[i]. */
float qd_scheduler_model_sigma(const qd_scheduler *s, int i);

/* scheduler.scale_model_input(x, timesteps[i]) in place on n floats. */
void qd_scheduler_scale_model_input(qd_scheduler *s, int i, float *x, int64_t n);

/* diffusers' scheduler.order: 2 for the classes whose timesteps repeat for a second
 * model call (Heun, KDPM2, KDPM2 ancestral), else 1. img2img skips t_start * order
 * timesteps. */
int qd_scheduler_order(const qd_scheduler *s);
/* set_begin_index(i) after set_timesteps (img2img): the first step() is step i, with
 * the class state as fresh as at step 0 (diffusers keeps no history from skipped steps). */
qd_status qd_scheduler_set_begin(qd_ctx *ctx, qd_scheduler *s, int i);
/* scheduler.add_noise(x0, noise, timesteps[i]) (flow classes: scale_noise) on n floats
 * into out, in float32 as torch: sigma-space classes (Euler, LMS, Heun, KDPM2, ...)
 * x0 + sigma_i * noise; DPM-Solver/DEIS/UniPC alpha_t x0 + sigma_t noise from sigmas[i];
 * DDIM/DDPM/PNDM sqrt(ac_t) x0 + sqrt(1 - ac_t) noise at t = timesteps[i]; flow
 * sigma_i * noise + (1 - sigma_i) * x0. */
void qd_scheduler_add_noise(const qd_scheduler *s, int i, const float *x0, const float *noise, int64_t n,
                            float *out);

/* latents = scheduler.step(model_output, timesteps[i], latents, generator=rng).prev_sample,
 * in place. sample holds `batch` items of `per_item` floats. Classes that draw
 * noise call qd_rng_randn(rng, buf, batch*per_item) when diffusers calls
 * randn_tensor(model_output.shape, generator=generator); rng may be NULL only
 * for classes that draw none. */
qd_status qd_scheduler_step(qd_ctx *ctx, qd_scheduler *s, int i, const float *model_output,
                            float *sample, int64_t batch, int64_t per_item, qd_rng *rng);

/* ======================= internal: shared by sched_*.c ====================== */

enum { QD_PRED_EPSILON, QD_PRED_V, QD_PRED_SAMPLE };
enum { QD_SPACING_LINSPACE, QD_SPACING_LEADING, QD_SPACING_TRAILING };
enum { QD_BETA_LINEAR, QD_BETA_SCALED_LINEAR, QD_BETA_SQUAREDCOS, QD_BETA_SIGMOID, QD_BETA_EXP };
enum { QD_ALGO_DPMSOLVERPP, QD_ALGO_SDE_DPMSOLVERPP, QD_ALGO_DPMSOLVER, QD_ALGO_SDE_DPMSOLVER, QD_ALGO_DEIS };
enum { QD_SOLVER_MIDPOINT, QD_SOLVER_HEUN, QD_SOLVER_LOGRHO, QD_SOLVER_BH1, QD_SOLVER_BH2 };
enum { QD_VAR_NONE, QD_VAR_FIXED_SMALL, QD_VAR_FIXED_SMALL_LOG, QD_VAR_FIXED_LARGE,
       QD_VAR_FIXED_LARGE_LOG, QD_VAR_LEARNED, QD_VAR_LEARNED_RANGE };

#define QD_SCHED_MAX_DISABLE 64

/* Union of the config fields of all classes (each class reads its own). */
typedef struct {
    int num_train_timesteps;
    double beta_start, beta_end;
    int beta_schedule;
    double *trained_betas;          /* owned; NULL = None */
    int n_trained_betas;
    int prediction_type;
    int timestep_spacing;
    int steps_offset;
    int interpolation_log_linear;   /* interpolation_type == "log_linear" */
    int use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas;
    int has_sigma_min, has_sigma_max;
    double sigma_min, sigma_max;
    int timestep_continuous;        /* timestep_type == "continuous" */
    int rescale_betas_zero_snr;
    int final_sigmas_zero;          /* final_sigmas_type == "zero" (else "sigma_min") */
    int clip_sample;
    double clip_sample_range;
    int set_alpha_to_one;
    int thresholding;
    double dynamic_thresholding_ratio, sample_max_value;
    int variance_type;
    int skip_prk_steps;
    int solver_order;
    int algorithm_type;
    int solver_type;
    int lower_order_final, euler_at_final, use_lu_lambdas;
    double lambda_min_clipped;
    int use_flow_sigmas;
    double flow_shift;
    int predict_x0;
    int disable_corrector[QD_SCHED_MAX_DISABLE];
    int n_disable_corrector;
    double eta;                     /* DDIM step(eta=...): not a diffusers config key */
    /* FlowMatchEulerDiscreteScheduler */
    double shift, base_shift, max_shift;
    int use_dynamic_shifting, base_image_seq_len, max_image_seq_len, invert_sigmas;
    int has_shift_terminal;
    double shift_terminal;
} qd_sched_config;

typedef struct qd_sched_class {
    const char *name;
    const char *const *keys;                        /* accepted config keys, NULL-terminated */
    void (*defaults)(qd_sched_config *c);           /* the class __init__ defaults */
    qd_status (*init)(qd_ctx *ctx, qd_scheduler *s);          /* validate config, state */
    qd_status (*set_timesteps)(qd_ctx *ctx, qd_scheduler *s, int steps);
    /* sigma the model is evaluated at for call i; classes that set it also
     * scale the model input by 1/sqrt(sigma^2+1). NULL: no input scaling. */
    float (*model_sigma)(const qd_scheduler *s, int i);
    qd_status (*step)(qd_ctx *ctx, qd_scheduler *s, int i, const float *model_output,
                      float *sample, int64_t batch, int64_t per_item, qd_rng *rng);
    void (*free_state)(qd_scheduler *s);            /* may be NULL */
    /* with rescale_betas_zero_snr, set alphas_cumprod[-1] = 2**-24 so the
     * first sigma is finite (Euler, Euler ancestral, DPM multistep, UniPC) */
    int zsnr_tiny_last;
} qd_sched_class;

struct qd_scheduler {
    const qd_sched_class *cls;
    qd_sched_config cfg;
    int n_train;
    float *betas;               /* [n_train] float32 */
    float *alphas_cumprod;      /* [n_train] float32 (cumprod accumulated in double, as torch CPU) */
    float final_alpha_cumprod;  /* DDIM/PNDM */
    float *train_sigmas;        /* [n_train] ((1-ac)/ac)**0.5 in float32 */
    float *log_sigmas;          /* [n_train] np.log of train_sigmas (float32) */
    int num_inference_steps;
    int n_timesteps;
    float *timesteps;           /* as the UNet receives them */
    int n_sigmas;
    float *sigmas;              /* float32 torch tensor values */
    float init_noise_sigma;
    int next_step;              /* step() index expected next */
    int64_t n;                  /* elements per step, fixed by the first step after set_timesteps */
    void *state;                /* class-specific */
    /* flow-matching inputs of the next set_timesteps (diffusers' mu= and sigmas= kwargs) */
    int has_flow_mu;
    double flow_mu;
    float *flow_sigmas;         /* owned; NULL: the class's own linspace */
    int n_flow_sigmas;
};

/* ---- schedule helpers (scheduler.c) ---- */

/* torch.linspace(start, end, steps, dtype=float32) on CPU, bit-exact. */
void qd_torch_linspace_f32(double start, double end, int steps, float *out);
/* np.linspace(start, stop, num) (float64, endpoint). */
void qd_np_linspace(double start, double stop, int num, double *out);
/* np.arange(start, stop, step) for float step; returns the count (out may be NULL). */
int qd_np_arange(double start, double stop, double step, double *out);
/* np.round: half to even. */
double qd_np_round(double x);
/* np.interp(x, arange(n), fp). */
double qd_np_interp_idx(double x, const float *fp, int n);
/* _sigma_to_t(sigma, log_sigmas) of the k-diffusion-style schedulers. */
double qd_sigma_to_t(double sigma, const float *log_sigmas, int n);
/* _convert_to_karras / _exponential / _beta over [sigma_min, sigma_max], n values, descending. */
void qd_sigmas_karras(double sigma_min, double sigma_max, int n, double *out);
void qd_sigmas_exponential(double sigma_min, double sigma_max, int n, double *out);
void qd_sigmas_beta(double sigma_min, double sigma_max, int n, double *out);
/* Timesteps by timestep_spacing as Euler/LMS/Heun/KDPM2 compute them
 * (float32, n values, descending). */
qd_status qd_sched_spacing_f32(qd_ctx *ctx, const qd_scheduler *s, int n, float *out);
/* DDIM/DDPM (n values, int64) spacing. */
qd_status qd_sched_spacing_int(qd_ctx *ctx, const qd_scheduler *s, int n, double *out);
/* DPM/DEIS/UniPC spacing (linspace over n+1 points, last dropped). */
qd_status qd_sched_spacing_multistep(qd_ctx *ctx, const qd_scheduler *s, int n, int last_timestep,
                                     double *out);
/* The sigma-space classes' set_timesteps core (Euler, LMS, Heun, KDPM2...):
 * timesteps by spacing (float32), sigmas interpolated from the training sigmas
 * (or Euler's log_linear), then optionally replaced by karras / exponential /
 * beta sigmas with timesteps from _sigma_to_t (rounded when round_ts).
 * ts gets n values; sig gets *n_sig (n, or n+1 for log_linear) values, float64
 * as numpy holds them, before the final sigma is appended. */
qd_status qd_sched_kdiff_sigmas(qd_ctx *ctx, const qd_scheduler *s, int n, float *ts, double *sig,
                                int *n_sig, int round_ts);
/* Per-element x0 from the model output for sigma-space classes (float32 math
 * as torch does it with a 0-dim float32 sigma). */
static inline float qd_kd_x0(int pred, float sigma, float mo, float x) {
    if (pred == QD_PRED_EPSILON) return x - sigma * mo;
    if (pred == QD_PRED_V) return mo * (-sigma / sqrtf(sigma * sigma + 1.0f)) + x / (sigma * sigma + 1.0f);
    return mo;
}
/* Dynamic thresholding (_threshold_sample) of x in place, per batch item. */
qd_status qd_sched_threshold(qd_ctx *ctx, const qd_sched_config *c, float *x, int64_t batch,
                             int64_t per_item);
/* sqrt((1-ac)/ac) for one alphas_cumprod value, in float32 like torch. */
float qd_sched_sigma_from_ac(float ac);
/* Replace s->timesteps / s->sigmas (takes ownership of the arrays). */
void qd_sched_set_arrays(qd_scheduler *s, float *timesteps, int n_t, float *sigmas, int n_s);
/* init_noise_sigma of the sigma-space classes: max sigma, or sqrt(max^2+1)
 * unless timestep_spacing is linspace/trailing. */
float qd_sched_init_sigma_kdiff(const qd_scheduler *s);
/* The same before set_timesteps (from the training sigmas), into s->init_noise_sigma. */
void qd_sched_init_sigma_train(qd_scheduler *s);
/* Check/record the element count of a step; allocates nothing. */
qd_status qd_sched_check_n(qd_ctx *ctx, qd_scheduler *s, int64_t n);
/* calloc a float buffer of s->n elements (error on failure). */
float *qd_sched_alloc(qd_ctx *ctx, const qd_scheduler *s);

/* ---- class pieces shared by several classes (sched_common.c) ---- */

/* The __init__ defaults nearly every class shares: 1000 training timesteps,
 * linear betas from beta_start to beta_end, epsilon prediction, spacing. */
void qd_sched_defaults(qd_sched_config *c, double beta_start, double beta_end, int spacing);

/* set_timesteps of DDIM and DDPM: integer timesteps by spacing
 * (qd_sched_spacing_int), each within the training range; no sigmas. */
qd_status qd_sched_discrete_set_timesteps(qd_ctx *ctx, qd_scheduler *s, int n);
/* DDIM/DDPM step: x0 from the model output at alphas_cumprod a_t (sa = sqrt(a_t),
 * sb = sqrt(1 - a_t)), float32, then thresholded or clipped to clip_sample_range. */
qd_status qd_sched_ddpm_x0(qd_ctx *ctx, const qd_sched_config *c, float sa, float sb, const float *mo,
                           const float *x, float *x0, int64_t batch, int64_t per_item);

/* Config keys of LMS, KDPM2 and KDPM2 ancestral (the same list in diffusers). */
extern const char *const qd_sched_kdiff_keys[];
/* set_timesteps of Euler, Euler ancestral and LMS: qd_sched_kdiff_sigmas (not
 * rounded) in float32 followed by final_sigma; init_noise_sigma updated. */
qd_status qd_sched_kdiff_set_timesteps(qd_ctx *ctx, qd_scheduler *s, int n, float final_sigma);
/* KDPM2 (ancestral): torch.lerp(a, b, 0.5) = b - (b - a) * 0.5 (weight not < 0.5). */
float qd_sched_lerp_half(float a, float b);
/* KDPM2 (ancestral): cat([v[:1], v[1:].repeat_interleave(2), v[-1:]]) for v of
 * n+1 values -> 2n+2 values. */
void qd_sched_interleave(const float *v, int n, float *out);

/* DPM-Solver multistep / single-step, DEIS, UniPC: */

/* alpha_t = 1/sqrt(sigma^2+1), sigma_t = sigma*alpha_t, lambda = log(alpha_t/sigma_t)
 * (_sigma_to_alpha_sigma_t), in float64 from a float32 sigma. */
typedef struct {
    double alpha, sigma, lambda;
} qd_sched_ast;
qd_sched_ast qd_sched_alpha_sigma(float sigma);
/* How many of the last training timesteps have lambda(t) < lambda_min_clipped
 * (cosine schedules), counted from the end until the first that does not. */
int qd_sched_lambda_clipped(const qd_scheduler *s);
/* sig[0..n) at the n timesteps t: the training sigmas interpolated at t, or
 * karras / exponential / beta sigmas (or DPM's use_lu_lambdas) over the
 * training range with t replaced by _sigma_to_t (rounded for karras and lu,
 * truncated otherwise). Returns 1 when the sigmas were converted. */
int qd_sched_multistep_sigmas(const qd_scheduler *s, int n, double *t, double *sig);
/* s->timesteps = float32(t[0..n)), s->sigmas = float32(sig[0..n)) + [last];
 * sets num_inference_steps. */
qd_status qd_sched_store_schedule(qd_ctx *ctx, qd_scheduler *s, int n, const double *t, const double *sig,
                                  float last);
/* set_timesteps of DPM multistep, DEIS and UniPC: spacing up to last_timestep,
 * sigmas as qd_sched_multistep_sigmas, final sigma 0 with final_sigmas_type
 * "zero", else the last converted sigma or the smallest training sigma. */
qd_status qd_sched_multistep_set_timesteps(qd_ctx *ctx, qd_scheduler *s, int n, int last_timestep);
/* convert_model_output at sigmas[i]: x0 (to_x0: DPM-Solver++, UniPC predict_x0)
 * or epsilon, with dynamic thresholding (on x0) when configured. */
qd_status qd_sched_convert_output(qd_ctx *ctx, const qd_scheduler *s, int i, int to_x0, const float *mo,
                                  const float *x, float *out, int64_t batch, int64_t per_item);

/* The registered classes (sched_*.c). */
extern const qd_sched_class qd_sched_euler, qd_sched_euler_ancestral, qd_sched_dpmsolver_multistep,
    qd_sched_ddim, qd_sched_pndm, qd_sched_ddpm, qd_sched_lms, qd_sched_heun, qd_sched_kdpm2,
    qd_sched_kdpm2_ancestral, qd_sched_dpmsolver_singlestep, qd_sched_deis, qd_sched_unipc,
    qd_sched_flow_euler;

#endif
