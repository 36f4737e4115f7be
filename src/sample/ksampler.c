/* The k-sampler registry, the run driver and the pieces the sampler families
 * share (denoise/noise calls, ancestral step, churn, half-logSNR). */
#include "sample/ksampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void qd_ks_opts_default(qd_ks_opts *o) {
    memset(o, 0, sizeof *o);
    o->eta = NAN;
    o->s_noise = 1;
    o->s_tmax = INFINITY;
    o->r = 0.5;
    o->rtol = 0.05;
    o->atol = 0.0078;
    o->h_init = 0.05;
    o->icoeff = 1;
    o->accept_safety = 0.81;
    o->flow_sigma_start = 0.9999;
    o->sa_corrector_order = -1;
    o->sde_sigma_hi = INFINITY;
}

#define ANC QD_KS_ANCESTRAL
#define BRN (QD_KS_ANCESTRAL | QD_KS_BROWNIAN)

/* ComfyUI's KSAMPLER_NAMES order, then ddim and the UniPC pair (SAMPLER_NAMES). The
 * _gpu names differ in ComfyUI only by where the Brownian tree lives. */
static const qd_ksampler table[] = {
    {"euler", "Euler ODE step (Karras Algorithm 2; s_churn optional)", qd_ks_euler, 0, 0, QD_KS_CHURN, 1},
    {"euler_cfg_pp", "Euler, CFG++ (the step direction uses the unconditional estimate)", qd_ks_euler_cfg_pp, 0, 0,
     QD_KS_CFG_PP, 1},
    {"euler_ancestral", "Euler plus ancestral noise (eta 1)", qd_ks_euler_ancestral, 0, 1, ANC, 1},
    {"euler_ancestral_cfg_pp", "Euler ancestral, CFG++", qd_ks_euler_cfg_pp, 1, 1, ANC | QD_KS_CFG_PP, 1},
    {"heun", "Heun 2nd order (2 model calls per step)", qd_ks_heun, 0, 0, QD_KS_CHURN, 2},
    {"heunpp2", "Heun++: up to 3-stage weighted Heun", qd_ks_heunpp2, 0, 0, QD_KS_CHURN, 0},
    {"exp_heun_2_x0", "exponential Heun in logSNR time, x0 prediction (SEEDS-2, r=1)", qd_ks_seeds_2, 1, 0, 0, 2},
    {"exp_heun_2_x0_sde", "stochastic exponential Heun, x0 prediction", qd_ks_seeds_2, 2, 1, ANC, 2},
    {"dpm_2", "DPM-Solver-2 (midpoint in log sigma)", qd_ks_dpm_2, 0, 0, QD_KS_CHURN | QD_KS_DISCARD_PENULTIMATE, 2},
    {"dpm_2_ancestral", "DPM-Solver-2 plus ancestral noise", qd_ks_dpm_2_ancestral, 0, 1,
     ANC | QD_KS_DISCARD_PENULTIMATE, 2},
    {"lms", "linear multistep, order 4", qd_ks_lms, 0, 0, 0, 1},
    {"dpm_fast", "DPM-Solver fast: fixed calls, orders 1-3 between sigma_max and sigma_min", qd_ks_dpm_fast, 0, 0,
     ANC, 0},
    {"dpm_adaptive", "DPM-Solver-12/23 with adaptive step size (error control)", qd_ks_dpm_adaptive, 0, 0, ANC, 0},
    {"dpmpp_2s_ancestral", "DPM-Solver++(2S) single-step plus ancestral noise", qd_ks_dpmpp_2s_ancestral, 0, 1, ANC,
     2},
    {"dpmpp_2s_ancestral_cfg_pp", "DPM-Solver++(2S) ancestral, CFG++", qd_ks_dpmpp_2s_ancestral, 1, 1,
     ANC | QD_KS_CFG_PP, 2},
    {"dpmpp_sde", "DPM-Solver++ SDE (single-step, r=1/2, Brownian noise)", qd_ks_dpmpp_sde, 0, 1, BRN, 2},
    {"dpmpp_sde_gpu", "= dpmpp_sde", qd_ks_dpmpp_sde, 0, 1, BRN, 2},
    {"dpmpp_2m", "DPM-Solver++(2M) multistep", qd_ks_dpmpp_2m, 0, 0, 0, 1},
    {"dpmpp_2m_cfg_pp", "DPM-Solver++(2M), CFG++", qd_ks_dpmpp_2m, 1, 0, QD_KS_CFG_PP, 1},
    {"dpmpp_2m_sde", "DPM-Solver++(2M) SDE, midpoint solver", qd_ks_dpmpp_2m_sde, 0, 1, BRN, 1},
    {"dpmpp_2m_sde_gpu", "= dpmpp_2m_sde", qd_ks_dpmpp_2m_sde, 0, 1, BRN, 1},
    {"dpmpp_2m_sde_heun", "DPM-Solver++(2M) SDE, Heun solver", qd_ks_dpmpp_2m_sde, 1, 1, BRN, 1},
    {"dpmpp_2m_sde_heun_gpu", "= dpmpp_2m_sde_heun", qd_ks_dpmpp_2m_sde, 1, 1, BRN, 1},
    {"dpmpp_3m_sde", "DPM-Solver++(3M) SDE", qd_ks_dpmpp_3m_sde, 0, 1, BRN, 1},
    {"dpmpp_3m_sde_gpu", "= dpmpp_3m_sde", qd_ks_dpmpp_3m_sde, 0, 1, BRN, 1},
    {"ddpm", "DDPM ancestral posterior step", qd_ks_ddpm, 0, 1, ANC, 1},
    {"lcm", "latent consistency: predict x0, re-noise to the next sigma", qd_ks_lcm, 0, 1, ANC, 1},
    {"ipndm", "improved PNDM, fixed-step multistep up to order 4", qd_ks_ipndm, 0, 0, 0, 1},
    {"ipndm_v", "improved PNDM, variable-step multistep up to order 4", qd_ks_ipndm, 1, 0, 0, 1},
    {"deis", "DEIS exponential-integrator multistep, order 3 (tab)", qd_ks_deis, 0, 0, 0, 1},
    {"res_multistep", "RES 2nd-order multistep exponential integrator", qd_ks_res_multistep, 0, 0, 0, 1},
    {"res_multistep_cfg_pp", "RES multistep, CFG++", qd_ks_res_multistep, 1, 0, QD_KS_CFG_PP, 1},
    {"res_multistep_ancestral", "RES multistep plus ancestral noise", qd_ks_res_multistep, 0, 1, ANC, 1},
    {"res_multistep_ancestral_cfg_pp", "RES multistep ancestral, CFG++", qd_ks_res_multistep, 1, 1,
     ANC | QD_KS_CFG_PP, 1},
    {"gradient_estimation", "Euler with gradient-estimation momentum (gamma 2)", qd_ks_gradient_estimation, 0, 0, 0,
     1},
    {"gradient_estimation_cfg_pp", "gradient estimation, CFG++", qd_ks_gradient_estimation, 1, 0, QD_KS_CFG_PP, 1},
    {"er_sde", "ER-SDE-Solver-3 (extended reverse-time SDE)", qd_ks_er_sde, 0, 1, ANC, 1},
    {"seeds_2", "SEEDS-2 exponential SDE solver, 2 stages", qd_ks_seeds_2, 0, 1, ANC, 2},
    {"seeds_3", "SEEDS-3 exponential SDE solver, 3 stages", qd_ks_seeds_3, 0, 1, ANC, 3},
    {"sa_solver", "SA-Solver: stochastic Adams predictor-corrector (orders 3/4, eta 1 in the middle of the schedule)",
     qd_ks_sa_solver, 0, 1, ANC, 1},
    {"sa_solver_pece", "SA-Solver with a model call after the corrector too (PECE)", qd_ks_sa_solver, 1, 1, ANC, 2},
    {"ddim", "= euler (ComfyUI's ddim differs only when inpainting)", qd_ks_euler, 0, 0, QD_KS_CHURN, 1},
    {"uni_pc", "UniPC predictor-corrector multistep, B(h)=h (bh1)", qd_ks_uni_pc, 0, 0,
     QD_KS_DISCARD_PENULTIMATE, 0},
    {"uni_pc_bh2", "UniPC, B(h)=e^h-1 (bh2)", qd_ks_uni_pc, 1, 0, QD_KS_DISCARD_PENULTIMATE, 0},
};
#define N_TABLE ((int)(sizeof table / sizeof table[0]))

const qd_ksampler *qd_ksampler_find(const char *name) {
    for (int i = 0; name && i < N_TABLE; i++)
        if (strcmp(table[i].name, name) == 0) return &table[i];
    return NULL;
}

const qd_ksampler *qd_ksampler_list(int *n) {
    *n = N_TABLE;
    return table;
}

int qd_ksampler_calls(const qd_ksampler *s, const double *sigmas, int n_sigmas) {
    int steps = n_sigmas - 1, last_zero = steps > 0 && sigmas[steps] == 0;
    if (steps <= 0) return 0;
    if (s->fn == qd_ks_dpm_adaptive) return -1;
    if (s->fn == qd_ks_dpm_fast || s->fn == qd_ks_uni_pc) return steps;
    if (s->fn == qd_ks_sa_solver)   /* one call up front; a last step makes none */
        return 1 + s->calls_per_step * (steps - 1);
    if (s->fn == qd_ks_heunpp2)   /* 3 calls, 2 on the step before the last, 1 on the last */
        return steps == 1 ? 1 : 3 * (steps - 2) + 2 + 1;
    return s->calls_per_step * steps - (last_zero ? s->calls_per_step - 1 : 0);
}

/* ------------------------------------------------------------------ run */

double *qd_ks_vec(qd_ks *k) {
    if (k->n_bufs >= (int)(sizeof k->bufs / sizeof k->bufs[0])) {
        qd_fail(k->ctx, QD_ERR_NOMEM, "sampler: too many scratch vectors");
        return NULL;
    }
    double *v = qd_calloc(k->ctx, (size_t)k->n, sizeof(double));
    if (v) k->bufs[k->n_bufs++] = v;
    return v;
}

qd_status qd_ks_denoise(qd_ks *k, const double *x, double sigma, double *x0) {
    k->calls++;
    return k->io->denoise(k->io->user, x, sigma, x0, NULL);
}

qd_status qd_ks_denoise2(qd_ks *k, const double *x, double sigma, double *x0, double *uncond_x0) {
    k->calls++;
    return k->io->denoise(k->io->user, x, sigma, x0, uncond_x0);
}

qd_status qd_ks_noise(qd_ks *k, double sigma, double sigma_next, double *out) {
    if (!k->io->noise) return qd_fail(k->ctx, QD_ERR_ARG, "sampler: this sampler needs a noise source");
    return k->io->noise(k->io->user, QD_KS_NOISE_STEP, sigma, sigma_next, out);
}

qd_status qd_ks_churn_noise(qd_ks *k, double *out) {
    if (!k->io->noise) return qd_fail(k->ctx, QD_ERR_ARG, "sampler: s_churn needs a noise source");
    QD_TRY(k->io->noise(k->io->user, QD_KS_NOISE_CHURN, 0, 0, out));
    for (int64_t j = 0; j < k->n; j++) out[j] *= k->o->s_noise;
    return QD_OK;
}

void qd_ks_ancestral_step(double from, double to, double eta, double *down, double *up) {
    if (eta == 0) {
        *down = to;
        *up = 0;
        return;
    }
    double u = eta * sqrt(to * to * (from * from - to * to) / (from * from));
    *up = u < to ? u : to;
    *down = sqrt(to * to - *up * *up);
}

qd_status qd_ks_churn(qd_ks *k, int i, double *sigma_hat, double *eps) {
    const qd_ks_opts *o = k->o;
    double s = k->sigmas[i], gamma = 0;
    if (o->s_churn > 0 && o->s_tmin <= s && s <= o->s_tmax) {
        gamma = o->s_churn / k->n_steps;
        if (gamma > M_SQRT2 - 1) gamma = M_SQRT2 - 1;
    }
    *sigma_hat = s * (gamma + 1);
    /* k-diffusion (and ComfyUI's heunpp2) draw the churn noise at every step,
     * ComfyUI's euler/heun/dpm_2 only where it is used */
    if (gamma > 0 || ((o->kdiffusion || k->churn_every_step) && o->s_churn > 0)) QD_TRY(qd_ks_churn_noise(k, eps));
    if (gamma > 0) {
        double f = sqrt(*sigma_hat * *sigma_hat - s * s);
        for (int64_t j = 0; j < k->n; j++) k->x[j] += eps[j] * f;
    }
    return QD_OK;
}

double qd_ks_lambda(const qd_ks *k, double sigma) {
    return k->o->flow ? log((1 - sigma) / sigma) : -log(sigma);
}

double qd_ks_sigma_of_lambda(const qd_ks *k, double lambda) {
    return k->o->flow ? 1 / (1 + exp(lambda)) : exp(-lambda);
}

double *qd_ks_snr_sigmas(qd_ks *k) {
    double *s = qd_malloc(k->ctx, sizeof(double) * (size_t)(k->n_steps + 1));
    if (!s) return NULL;
    memcpy(s, k->sigmas, sizeof(double) * (size_t)(k->n_steps + 1));
    if (k->o->flow && k->n_steps >= 1 && s[0] >= 1) s[0] = k->o->flow_sigma_start;
    return s;
}

qd_status qd_ksample(qd_ctx *ctx, const qd_ksampler *s, const qd_ks_opts *o, const double *sigmas,
                     int n_sigmas, double *x, int64_t n, const qd_ks_io *io) {
    if (!s || !o || !io || !io->denoise || !x || n <= 0 || n_sigmas < 1 || !sigmas)
        return qd_fail(ctx, QD_ERR_ARG, "sampler: bad arguments");
    for (int i = 0; i < n_sigmas; i++)
        if (!(sigmas[i] >= 0) || !isfinite(sigmas[i]) || (i > 0 && sigmas[i] > sigmas[i - 1]))
            return qd_fail(ctx, QD_ERR_ARG, "%s: sigmas must be finite, >= 0 and not increasing (sigma[%d] = %g)",
                           s->name, i, sigmas[i]);
    if (n_sigmas >= 2 && sigmas[0] == 0)
        return qd_fail(ctx, QD_ERR_ARG, "%s: the first sigma is 0", s->name);
    qd_ks k = {0};
    k.ctx = ctx;
    k.o = o;
    k.io = io;
    k.sigmas = sigmas;
    k.n_steps = n_sigmas - 1;
    k.x = x;
    k.n = n;
    k.variant = s->variant;
    k.eta = isnan(o->eta) ? s->default_eta : o->eta;
    if (k.eta < 0 || !isfinite(k.eta)) return qd_fail(ctx, QD_ERR_ARG, "%s: eta must be >= 0 (got %g)", s->name, k.eta);
    qd_status st = k.n_steps > 0 ? s->fn(&k) : QD_OK;
    for (int i = 0; i < k.n_bufs; i++) free(k.bufs[i]);
    if (st == QD_OK)
        for (int64_t j = 0; j < n; j++)
            if (!isfinite(x[j]))
                return qd_fail(ctx, QD_ERR_ARG, "%s: the sample is not finite (value %lld is %g)", s->name,
                               (long long)j, x[j]);
    return st;
}
