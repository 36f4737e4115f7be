/* Model folders whose weights are wrong in ways the file format allows: a tensor
 * missing, a tensor of the wrong shape, one of an integer dtype, data offsets past
 * the end. qd_model_open must fail with a message naming the file and the tensor. */
#include "testutil.h"
#include "io/safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Copy the sd15-tiny folder to a temp dir (cp -r) and return its path. */
static char *copy_model(char *buf, size_t n) {
    snprintf(buf, n, "/tmp/qd_badw_XXXXXX");
    if (!mkdtemp(buf)) return NULL;
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "cp -r '%s'/. '%s'/", fixture("models/sd15-tiny"), buf);
    return system(cmd) == 0 ? buf : NULL;
}

static void remove_dir(const char *dir) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

typedef enum { DROP, RESHAPE, TO_INT } edit_kind;

/* Rewrite dir/unet weights with one tensor edited. */
static int rewrite_unet(qd_ctx *ctx, const char *dir, const char *victim, edit_kind kind) {
    char path[4096];
    snprintf(path, sizeof path, "%s/unet/diffusion_pytorch_model.safetensors", dir);
    qd_st_set set;
    if (qd_st_open(ctx, path, &set) != QD_OK) return -1;
    qd_st_out *out = calloc((size_t)set.n_tensors, sizeof *out);
    int n = 0;
    for (int64_t i = 0; i < set.n_tensors; i++) {
        const qd_st_tensor *t = &set.tensors[i];
        int hit = strcmp(t->name, victim) == 0;
        if (hit && kind == DROP) continue;
        qd_st_out *o = &out[n++];
        o->name = t->name;
        o->dtype = t->dtype;
        o->ndim = t->ndim;
        memcpy(o->shape, t->shape, sizeof o->shape);
        o->data = t->data;
        if (hit && kind == RESHAPE) { o->ndim = 1; o->shape[0] = t->numel; }
        if (hit && kind == TO_INT) o->dtype = QD_I16;   /* same byte size as F16 */
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.new", path);
    int rc = qd_st_write(ctx, tmp, out, n, NULL) == QD_OK ? 0 : -1;
    free(out);
    qd_st_close(&set);
    if (rc == 0) rc = rename(tmp, path);
    return rc;
}

static void expect_fail(qd_ctx *ctx, const char *what, const char *victim, edit_kind kind, const char *want) {
    char buf[256];
    const char *dir = copy_model(buf, sizeof buf);
    if (!dir || rewrite_unet(ctx, dir, victim, kind) != 0) { check(0, "%s: setup failed", what); return; }
    qd_model *m = NULL;
    qd_status st = qd_model_open(ctx, dir, &m);
    const char *err = qd_last_error(ctx);
    check(st != QD_OK && !m && strstr(err, "unet/diffusion_pytorch_model.safetensors") && strstr(err, victim) &&
              strstr(err, want), "%s: %s", what, err);
    qd_model_free(m);
    remove_dir(dir);
}

int main(void) {
    qd_ctx *ctx = test_ctx_new(0);
    expect_fail(ctx, "tensor missing", "down_blocks.1.resnets.0.conv1.weight", DROP, "missing");
    expect_fail(ctx, "tensor of wrong shape", "mid_block.attentions.0.proj_in.weight", RESHAPE, "shape");
    expect_fail(ctx, "tensor of integer dtype", "conv_out.weight", TO_INT, "I16");
    qd_ctx_free(ctx);
    return test_summary();
}
