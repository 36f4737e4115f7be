/* Noise schedules for the k-samplers, as ComfyUI computes them (its
 * SCHEDULER_HANDLERS plus k-diffusion's polyexponential and vp), from a
 * description of the model's sampling: ComfyUI's model_sampling objects.
 *
 *   eps / v models (SD1.5, SDXL): ModelSamplingDiscrete, the table
 *     sigma_t = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t]), t = 0..N-1,
 *     sigma(t) interpolates log sigma linearly between table entries;
 *   flow models: sigma(t) = shift * tau / (1 + (shift - 1) * tau), tau = t / 1000
 *     (SD3's ModelSamplingDiscreteFlow, a static shift), or
 *     sigma(t) = e^mu / (e^mu + 1/t - 1) (ModelSamplingFlux, mu from the
 *     image size as diffusers' dynamic shifting computes it), with a table of
 *     1000 (SD3) or 10000 (FLUX) entries at tau = (i + 1) / size.
 * Every schedule ends with sigma 0 (schedules are descending). */
#ifndef QD_SAMPLE_KSCHED_H
#define QD_SAMPLE_KSCHED_H

#include "base/ctx.h"

enum { QD_MS_EPS = 0, QD_MS_V = 1, QD_MS_FLOW = 2 };

typedef struct {
    int kind;               /* QD_MS_EPS, QD_MS_V or QD_MS_FLOW */
    int n;                  /* table entries */
    double *sigmas;         /* [n] ascending: the sigma of timestep 0 .. n-1 */
    double *log_sigmas;     /* [n] */
    float *log_sigmas_f;    /* [n] float32 copy (qd_sigma_to_t, as the diffusers schedulers) */
    int flux_shift;         /* flow: 1 = FLUX's exponential time shift with mu = shift */
    double shift;           /* flow: shift (SD3) or mu (FLUX) */
    double multiplier;      /* flow: model time t = sigma * multiplier (1000 SD3, 1 FLUX) */
} qd_model_sampling;

/* eps (v_pred 0) or v-prediction sampling from a diffusers scheduler's
 * alphas_cumprod (float32, n entries): sigmas in float32 as the diffusers
 * schedulers and ComfyUI hold them. */
qd_status qd_model_sampling_discrete(qd_ctx *ctx, qd_model_sampling *ms, const float *alphas_cumprod, int n,
                                     int v_pred);
/* Flow sampling; flux_shift selects FLUX's exponential shift (mu = shift, table
 * of 10000, multiplier 1) over SD3's (table of 1000, multiplier 1000). */
qd_status qd_model_sampling_flow(qd_ctx *ctx, qd_model_sampling *ms, int flux_shift, double shift);
void qd_model_sampling_free(qd_model_sampling *ms);

static inline double qd_ms_sigma_min(const qd_model_sampling *ms) { return ms->sigmas[0]; }
static inline double qd_ms_sigma_max(const qd_model_sampling *ms) { return ms->sigmas[ms->n - 1]; }
/* sigma(t) for a model timestep t (discrete: 0..n-1, log-linear between entries). */
double qd_ms_sigma(const qd_model_sampling *ms, double t);
/* ComfyUI's timestep(sigma): the nearest table index (discrete), sigma * multiplier (flow). */
double qd_ms_timestep(const qd_model_sampling *ms, double sigma);
/* percent_to_sigma: the sigma at a fraction of the way through sampling (0: start). */
double qd_ms_percent_to_sigma(const qd_model_sampling *ms, double percent);

typedef struct {
    double sigma_min, sigma_max;    /* NAN: the model's (karras, exponential, polyexponential, kl_optimal) */
    double rho;                     /* NAN: 7 (karras), 1 (polyexponential) */
    double vp_beta_d, vp_beta_min, vp_eps_s;   /* vp: 19.9, 0.1, 1e-3 */
    double threshold_noise;         /* linear_quadratic: 0.025 */
    int linear_steps;               /* linear_quadratic: 0 = steps / 2 */
} qd_ksched_opts;

void qd_ksched_opts_default(qd_ksched_opts *o);

/* Schedule names (NULL-terminated) and a one-line description of each (NULL if unknown). */
const char *const *qd_ksched_names(void);
const char *qd_ksched_about(const char *name);

/* The sigmas of schedule `name` for `steps` steps: *out (malloc'd) gets *n_out
 * values, normally steps + 1 ending in 0; ddim_uniform and beta may give other
 * counts, as in ComfyUI. Unknown names fail with QD_ERR_ARG listing the known. */
qd_status qd_ksched_sigmas(qd_ctx *ctx, const char *name, const qd_model_sampling *ms, int steps,
                           const qd_ksched_opts *o, double **out, int *n_out);

#endif
