/* What generate and serve both need around qd_generate: random A1111-style seeds and
 * the A1111 "parameters" text stored in each PNG. */
#include "cli.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

uint64_t cli_random_seed(void) {
    uint64_t s = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(&s, sizeof s, 1, f) != 1) s = (uint64_t)time(NULL) * 2654435761u;
    if (f) fclose(f);
    return s & 0xffffffffu;   /* A1111-style seeds fit in 32 bits */
}

const char *cli_model_name(const char *dir) {
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;   /* "models/x/" names x too */
    const char *end = dir + n, *s = end;
    while (s > dir && s[-1] != '/') s--;
    static __thread char name[512];
    snprintf(name, sizeof name, "%.*s", (int)(end - s), s);
    return name[0] ? name : dir;
}

const char *cli_schedule_label(const qd_model *m, const qd_gen_params *p) {
    if (!p->sampler) return NULL;
    if (p->schedule) return p->schedule;
    const char *fam = qd_model_family(m);
    return strcmp(fam, "sd3") && strcmp(fam, "flux") ? "normal" : "simple";
}

int cli_masked_content(const char *name) {
    static const char *const names[] = {"original", "fill", "latent-noise", "latent-nothing"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, names[i])) return i;
    return -1;
}

void cli_params_text(char *buf, size_t n, const qd_model *m, const char *model_name, const qd_gen_params *p,
                     int batch_pos, int mask_blur, int crop_pad) {
    char extra[256] = "";
    if (strcmp(qd_model_family(m), "flux") == 0) snprintf(extra, sizeof extra, ", Guidance: %g", p->guidance);
    const char *sched = p->sampler ? p->sampler : p->scheduler ? p->scheduler : qd_model_scheduler(m);
    char sched_more[96];   /* " Karras", or the k-sampler's schedule */
    snprintf(sched_more, sizeof sched_more, "%s%s", p->sampler ? ", Schedule type: " : p->karras == 1 ? " Karras" : "",
             p->sampler ? cli_schedule_label(m, p) : "");
    /* the LoRAs used, as "LoRA: name:scale, name:scale" (name: the file name without .safetensors) */
    char loras[1024] = "";
    size_t ll = 0;
    for (int i = 0; i < p->n_loras && ll + 1 < sizeof loras; i++) {
        float s = p->lora_scales ? p->lora_scales[i] : 1.0f;
        if (s == 0.0f) continue;
        const char *slash = strrchr(p->loras[i], '/'), *name = slash ? slash + 1 : p->loras[i];
        size_t nl = strlen(name);
        if (nl > 12 && !strcmp(name + nl - 12, ".safetensors")) nl -= 12;
        int w = snprintf(loras + ll, sizeof loras - ll, "%s%.*s:%g", ll ? ", " : ", LoRA: ", (int)nl, name, (double)s);
        if (w < 0) break;
        ll += (size_t)w;
    }
    if (ll >= sizeof loras) loras[sizeof loras - 1] = 0;
    if (p->init_image || p->init_latents)   /* A1111's img2img key */
        snprintf(extra + strlen(extra), sizeof extra - strlen(extra), ", Denoising strength: %g", p->strength);
    if (p->mask)   /* A1111 records the blur of an inpainting mask */
        snprintf(extra + strlen(extra), sizeof extra - strlen(extra), ", Mask blur: %d", mask_blur);
    static const char *const content[] = {"original", "fill", "latent noise", "latent nothing"};
    if (p->mask && p->masked_content > QD_MASKED_ORIGINAL && p->masked_content <= QD_MASKED_LATENT_NOTHING)
        snprintf(extra + strlen(extra), sizeof extra - strlen(extra), ", Masked content: %s", content[p->masked_content]);
    if (p->mask && crop_pad >= 0)
        snprintf(extra + strlen(extra), sizeof extra - strlen(extra),
                 ", Inpaint area: Only masked, Masked area padding: %d", crop_pad);
    snprintf(buf, n,
             "%s\nNegative prompt: %s\nSteps: %d, Sampler: %s%s, CFG scale: %g, Seed: %llu, Size: %dx%d, "
             "Model: %s, Batch pos: %d%s%s, Version: qdiff %s",
             p->prompt, p->negative_prompt ? p->negative_prompt : "", p->steps, sched, sched_more, p->cfg_scale,
             (unsigned long long)p->seed, p->width, p->height, model_name, batch_pos, extra, loras, QDIFF_VERSION);
}
