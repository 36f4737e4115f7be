/* qd_list: the sampler, schedule and scheduler-class names generate accepts. */
#include "qdiff.h"
#include "sample/ksampler.h"
#include "sample/ksched.h"
#include "sample/scheduler.h"

#include <string.h>

static const char *const class_about[][2] = {
    {"EulerDiscreteScheduler", "Euler; karras / exponential / beta sigmas, v-prediction, zero-terminal-SNR"},
    {"EulerAncestralDiscreteScheduler", "Euler plus ancestral noise"},
    {"DPMSolverMultistepScheduler", "DPM-Solver++ 2M, or SDE / DPM-Solver variants by algorithm_type"},
    {"DPMSolverSinglestepScheduler", "DPM-Solver single-step, orders 1-3"},
    {"DDIMScheduler", "DDIM; eta, clip_sample, dynamic thresholding"},
    {"DDPMScheduler", "DDPM ancestral sampling"},
    {"PNDMScheduler", "PNDM / PLMS (the SD1.5 folders' default)"},
    {"LMSDiscreteScheduler", "linear multistep, order 4"},
    {"HeunDiscreteScheduler", "Heun 2nd order (2 model calls per step)"},
    {"KDPM2DiscreteScheduler", "DPM-Solver-2 in k-diffusion's form"},
    {"KDPM2AncestralDiscreteScheduler", "DPM-Solver-2 plus ancestral noise"},
    {"DEISMultistepScheduler", "DEIS multistep"},
    {"UniPCMultistepScheduler", "UniPC predictor-corrector multistep"},
    {"FlowMatchEulerDiscreteScheduler", "flow-matching Euler (SD3, FLUX), static or dynamic shift"},
};

const char *qd_list(int what, int i, const char **about) {
    if (about) *about = NULL;
    if (i < 0) return NULL;
    if (what == QD_LIST_SAMPLERS) {
        int n;
        const qd_ksampler *list = qd_ksampler_list(&n);
        if (i >= n) return NULL;
        if (about) *about = list[i].about;
        return list[i].name;
    }
    if (what == QD_LIST_SCHEDULES) {
        const char *const *names = qd_ksched_names();
        for (int k = 0; k < i; k++)
            if (!names[k]) return NULL;
        if (names[i] && about) *about = qd_ksched_about(names[i]);
        return names[i];
    }
    if (what == QD_LIST_SCHEDULER_CLASSES) {
        const char *const *names = qd_scheduler_classes();
        for (int k = 0; k < i; k++)
            if (!names[k]) return NULL;
        if (names[i] && about)
            for (size_t k = 0; k < sizeof class_about / sizeof class_about[0]; k++)
                if (!strcmp(class_about[k][0], names[i])) *about = class_about[k][1];
        return names[i];
    }
    return NULL;
}
