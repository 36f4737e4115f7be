/* Internals shared by the single-file key maps (single_file_ldm.c, single_file_flux.c, single_file_sd3.c)
 * and single_file.c: a builder that collects each component's converted tensors. */
#ifndef QD_CONVERT_SINGLE_FILE_MAP_H
#define QD_CONVERT_SINGLE_FILE_MAP_H

#include "convert/single_file.h"

#include <string.h>

typedef struct sf_build sf_build;

/* s past prefix p, or NULL when s does not start with p. */
static inline const char *sf_after(const char *s, const char *p) {
    size_t n = strlen(p);
    return strncmp(s, p, n) == 0 ? s + n : NULL;
}

/* "<digits>." at *s: the number, *s moved past the dot; -1 when absent (or > 100000). */
static inline long sf_take_index(const char **s) {
    const char *p = *s;
    long v = 0;
    if (*p < '0' || *p > '9') return -1;
    while (*p >= '0' && *p <= '9') {
        v = v * 10 + (*p - '0');
        if (v > 100000) return -1;
        p++;
    }
    if (*p != '.') return -1;
    *s = p + 1;
    return v;
}

enum {
    SF_VIEW,        /* rows [row0, row0+rows) of the source, shape otherwise unchanged */
    SF_LINEAR,      /* a 1x1 conv weight [O, I, 1, 1] (or already [O, I]) as a Linear [O, I] */
    SF_SWAP,        /* the two halves of dim 0 swapped (FLUX norm_out: shift/scale -> scale/shift) */
    SF_TRANSPOSE,   /* a 2-D [A, B] stored as [B, A] */
};

/* A mapper's answer for one key. */
enum { SF_UNKNOWN = 0, SF_MAPPED = 1, SF_FAILED = -1 };

qd_ctx *sf_ctx(sf_build *b);
const char *sf_file(sf_build *b);
/* The file's tensor `key` (full name), or NULL. */
const qd_st_tensor *sf_src(sf_build *b, const char *key);
/* Index of component `name`, created on first use. */
int sf_comp(sf_build *b, const char *name, const char *cls, const char *weights_name);
/* Add converted tensor `name` of component comp from src (checks the slice and the
 * op against src's shape). rows < 0: all rows. Returns SF_MAPPED or SF_FAILED. */
int sf_add(sf_build *b, int comp, const char *name, const qd_st_tensor *src, int64_t row0, int64_t rows, int op);
/* sf_add of the whole of src under a printf-formatted name (SF_UNKNOWN if it does not fit). */
int sf_add_fmt(sf_build *b, int comp, const qd_st_tensor *src, int op, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Split src (a fused weight or bias) by rows into n parts of the given row counts. */
int sf_split(sf_build *b, int comp, const char *const *names, const int64_t *rows, int n, const qd_st_tensor *src);

/* Key maps: `key` is the name with its component prefix removed, src the file's
 * tensor. Return SF_MAPPED (also for tensors deliberately dropped), SF_UNKNOWN or
 * SF_FAILED. prefix: the full prefix, for looking up sibling tensors. */
int sf_map_ldm_unet(sf_build *b, int comp, const char *prefix, const char *key, const qd_st_tensor *src);
int sf_map_ldm_vae(sf_build *b, int comp, const char *prefix, const char *key, const qd_st_tensor *src);
int sf_map_clip(sf_build *b, int comp, const char *key, const qd_st_tensor *src);
int sf_map_open_clip(sf_build *b, int comp, const char *prefix, const char *key, const qd_st_tensor *src);
int sf_map_flux(sf_build *b, int comp, const char *prefix, const char *key, const qd_st_tensor *src);
int sf_map_sd3(sf_build *b, int comp, const char *prefix, const char *key, const qd_st_tensor *src);
int sf_map_t5(sf_build *b, int comp, const char *key, const qd_st_tensor *src);

/* Whole-file checks after mapping: every fused group complete (FLUX blocks). */
qd_status sf_check_flux(sf_build *b, const char *prefix);
/* The same for SD3's joint blocks (single_file_sd3.c). */
qd_status sf_check_sd3(sf_build *b, const char *prefix);

/* Layers per block of the LDM UNet / number of VAE decoder levels, found from the
 * keys before mapping (0: not found). */
void sf_ldm_set_layout(sf_build *b, int unet_layers_per_block, int vae_levels);
int sf_ldm_unet_layers(sf_build *b);
int sf_ldm_vae_levels(sf_build *b);

/* Built-in config.json of a component from its converted tensors (single_file_config.c).
 * NULL (with ctx error) when it cannot be inferred. */
char *sf_infer_config(qd_ctx *ctx, const qd_single_file *sf, const qd_sf_component *c);
/* The family's model_index.json and default scheduler_config.json (malloc'd text). */
char *sf_default_model_index(qd_sf_family fam, const qd_single_file *sf);
char *sf_default_scheduler(qd_sf_family fam, const qd_single_file *sf);

#endif
