/* ComfyUI / k-diffusion samplers ("euler", "dpmpp_2m", ...) over a noise
 * schedule of sigmas, in float64.
 *
 * A sampler sees only two callbacks, never the model:
 *   denoise(x, sigma) -> x0   the model's estimate of the clean latents, and
 *   noise(sigma, sigma_next)  standard normal noise of the latent's size.
 * x lives in the model's own parameterization: x = x0 + sigma*n (eps and v
 * models, "VE") or x = (1-sigma)*x0 + sigma*n (flow models). The probability
 * flow ODE is dx/dsigma = (x - x0)/sigma in both, so the ODE samplers need no
 * special case; the ancestral and SDE samplers add noise differently for flow
 * models (ComfyUI's _RF forms and half-logSNR lambda), selected by opts.flow.
 *
 * The math follows k-diffusion (crowsonkb/k-diffusion, MIT) and ComfyUI's copy
 * of it (comfy/k_diffusion/sampling.py, comfy/extra_samplers/uni_pc.py), whose
 * behaviour is reproduced where the two differ unless opts.kdiffusion is set
 * (see there). Sampler names are ComfyUI's; tests/fixtures/samplers holds
 * k-diffusion's own outputs. */
#ifndef QD_SAMPLE_KSAMPLER_H
#define QD_SAMPLE_KSAMPLER_H

#include <stdint.h>
#include "base/ctx.h"

/* Why noise is asked for: a noise_sampler(sigma, sigma_next) call of an
 * ancestral/SDE sampler, or the randn_like of s_churn (Karras's "churn"). */
enum { QD_KS_NOISE_STEP = 0, QD_KS_NOISE_CHURN = 1 };

typedef struct {
    /* x0 = D(x, sigma) for the run's n values. uncond_x0 is NULL except for
     * the CFG++ samplers (flag QD_KS_CFG_PP): it then receives the
     * unconditional estimate as well. Any error stops the run. */
    qd_status (*denoise)(void *user, const double *x, double sigma, double *x0, double *uncond_x0);
    /* n standard normal values. For STEP noise, (sigma, sigma_next) is the
     * interval the noise belongs to (a Brownian noise source needs it). */
    qd_status (*noise)(void *user, int kind, double sigma, double sigma_next, double *out);
    void *user;
} qd_ks_io;

typedef struct {
    double eta;         /* ancestral / SDE strength; NAN: the sampler's default
                           (1, or 0 for dpm_fast, dpm_adaptive, res_multistep) */
    double s_noise;     /* noise multiplier, default 1 */
    double s_churn, s_tmin, s_tmax;   /* euler, heun, heunpp2, dpm_2: Karras churn (0, 0, inf) */
    int order;          /* 0: default (lms 4, ipndm/ipndm_v 4, deis 3, dpm_adaptive 3, er_sde 3) */
    double r;           /* dpmpp_sde midpoint fraction, default 0.5 */
    double rtol, atol, h_init, pcoeff, icoeff, dcoeff, accept_safety;   /* dpm_adaptive */
    int flow;           /* the model is a flow model (ComfyUI's CONST model sampling) */
    double flow_sigma_start;   /* flow: the sigma that replaces a first sigma >= 1 in the
                                  logSNR samplers (ComfyUI: model percent_to_sigma(1e-4)) */
    /* Behave as upstream k-diffusion (what the fixtures hold) where ComfyUI's
     * copy differs: with s_churn > 0 churn noise is drawn at every step (not
     * only where gamma > 0), and lms integrates its last step instead of
     * returning the denoised estimate. */
    int kdiffusion;
    /* sa_solver: predictor order 1..3 (0: 3), corrector order 0..4 (-1: 4), and the
     * sigma range where its noise strength is eta (0 outside): [lo, hi]. */
    int sa_predictor_order, sa_corrector_order;
    double sde_sigma_lo, sde_sigma_hi;
} qd_ks_opts;

void qd_ks_opts_default(qd_ks_opts *o);

enum {
    QD_KS_DISCARD_PENULTIMATE = 1,  /* ComfyUI computes steps+1 sigmas and drops the second to last */
    QD_KS_CFG_PP = 2,               /* needs the unconditional estimate (CFG++) */
    QD_KS_ANCESTRAL = 4,            /* draws per-step noise (eta, s_noise apply) */
    QD_KS_BROWNIAN = 8,             /* ComfyUI feeds it Brownian-tree noise (SDE samplers) */
    QD_KS_CHURN = 16                /* takes s_churn / s_tmin / s_tmax */
};

/* A run: what every sampler function gets. */
typedef struct qd_ks {
    qd_ctx *ctx;
    const qd_ks_opts *o;
    const qd_ks_io *io;
    const double *sigmas;   /* n_steps + 1 values, descending, usually ending in 0 */
    int n_steps;
    double *x;              /* in: initial x (noise at sigmas[0]); out: the sample */
    int64_t n;
    int variant;            /* the table entry's variant (e.g. heun solver, cfg++) */
    double eta;             /* opts.eta or the entry's default */
    int calls;              /* denoise calls made */
    int churn_every_step;   /* draw churn noise at every step when s_churn > 0 (heunpp2 in ComfyUI) */
    double *bufs[24];       /* scratch vectors (qd_ks_vec), freed after the run */
    int n_bufs;
} qd_ks;

typedef qd_status (*qd_ks_fn)(qd_ks *k);

typedef struct {
    const char *name;       /* ComfyUI's name */
    const char *about;      /* one line for `qdiff samplers` */
    qd_ks_fn fn;
    int variant;
    double default_eta;
    unsigned flags;
    int calls_per_step;     /* model calls per step (a step to sigma 0 costs 1); 0: see qd_ksampler_calls */
} qd_ksampler;

/* NULL when unknown. */
const qd_ksampler *qd_ksampler_find(const char *name);
/* All samplers, in ComfyUI's list order; *n gets the count. */
const qd_ksampler *qd_ksampler_list(int *n);
/* Model calls a run over these sigmas makes; -1 when not known in advance (dpm_adaptive). */
int qd_ksampler_calls(const qd_ksampler *s, const double *sigmas, int n_sigmas);

/* Run sampler s over sigmas[0..n_sigmas) on x (n values, in place). */
qd_status qd_ksample(qd_ctx *ctx, const qd_ksampler *s, const qd_ks_opts *o, const double *sigmas,
                     int n_sigmas, double *x, int64_t n, const qd_ks_io *io);

/* ---- shared by the ksampler_*.c families ---- */

/* A zeroed scratch vector of n values, freed when the run ends (NULL: out of memory, error set). */
double *qd_ks_vec(qd_ks *k);
qd_status qd_ks_denoise(qd_ks *k, const double *x, double sigma, double *x0);
/* CFG++: the guided and the unconditional estimate. */
qd_status qd_ks_denoise2(qd_ks *k, const double *x, double sigma, double *x0, double *uncond_x0);
qd_status qd_ks_noise(qd_ks *k, double sigma, double sigma_next, double *out);
/* Churn noise (s_churn): drawn into out, scaled by s_noise. */
qd_status qd_ks_churn_noise(qd_ks *k, double *out);
/* get_ancestral_step: the sigma to step down to and the noise to add back. */
void qd_ks_ancestral_step(double sigma_from, double sigma_to, double eta, double *sigma_down, double *sigma_up);
/* Karras churn of step i: gamma (0 outside [s_tmin, s_tmax] or without s_churn);
 * draws and adds the noise (x += eps * sqrt(sigma_hat^2 - sigma^2)) as ComfyUI
 * or k-diffusion does; *sigma_hat = sigma * (1 + gamma). */
qd_status qd_ks_churn(qd_ks *k, int i, double *sigma_hat, double *eps_buf);
/* torch.lerp(a, b, w) */
static inline double qd_ks_lerp(double a, double b, double w) { return w < 0.5 ? a + w * (b - a) : b - (b - a) * (1 - w); }
/* half-logSNR lambda = log(alpha/sigma) of the model parameterization and back:
 * VE -log(sigma); flow log((1-sigma)/sigma). */
double qd_ks_lambda(const qd_ks *k, double sigma);
double qd_ks_sigma_of_lambda(const qd_ks *k, double lambda);
/* offset_first_sigma_for_snr: a copy of the sigmas whose first value, for flow
 * models, is at most opts.flow_sigma_start (logit(1) is infinite). */
double *qd_ks_snr_sigmas(qd_ks *k);

/* The sampler functions (ksampler_*.c). */
qd_status qd_ks_euler(qd_ks *k);
qd_status qd_ks_euler_ancestral(qd_ks *k);
qd_status qd_ks_euler_cfg_pp(qd_ks *k);
qd_status qd_ks_heun(qd_ks *k);
qd_status qd_ks_heunpp2(qd_ks *k);
qd_status qd_ks_gradient_estimation(qd_ks *k);
qd_status qd_ks_dpm_2(qd_ks *k);
qd_status qd_ks_dpm_2_ancestral(qd_ks *k);
qd_status qd_ks_dpm_fast(qd_ks *k);
qd_status qd_ks_dpm_adaptive(qd_ks *k);
qd_status qd_ks_dpmpp_2s_ancestral(qd_ks *k);
qd_status qd_ks_dpmpp_sde(qd_ks *k);
qd_status qd_ks_dpmpp_2m(qd_ks *k);
qd_status qd_ks_dpmpp_2m_sde(qd_ks *k);
qd_status qd_ks_dpmpp_3m_sde(qd_ks *k);
qd_status qd_ks_lms(qd_ks *k);
qd_status qd_ks_ddpm(qd_ks *k);
qd_status qd_ks_lcm(qd_ks *k);
qd_status qd_ks_ipndm(qd_ks *k);
qd_status qd_ks_deis(qd_ks *k);
qd_status qd_ks_res_multistep(qd_ks *k);
qd_status qd_ks_er_sde(qd_ks *k);
qd_status qd_ks_seeds_2(qd_ks *k);
qd_status qd_ks_seeds_3(qd_ks *k);
qd_status qd_ks_uni_pc(qd_ks *k);
qd_status qd_ks_sa_solver(qd_ks *k);

#endif
