/* safetensors reader: real fixture files load; malformed files fail with a message. */
#include "testutil.h"
#include "io/safetensors.h"

#include <stdlib.h>
#include <string.h>

int main(void) {
    qd_ctx *ctx = qd_ctx_new(1);
    qd_st_set set;
    const char *te = fixture("models/sd15-tiny/text_encoder/model.safetensors");
    check(qd_st_open(ctx, te, &set) == QD_OK, "open %s", te);
    const qd_st_tensor *t = qd_st_find(&set, "text_model.embeddings.token_embedding.weight");
    check(t && t->dtype == QD_F16 && t->ndim == 2 && t->shape[0] == 49408 && t->shape[1] == 32,
          "token_embedding is F16 [49408, 32]");
    const qd_st_tensor *g;
    int64_t want[2] = {49408, 33};
    check(qd_st_get(ctx, &set, "text_model.embeddings.token_embedding.weight", 2, want, &g) != QD_OK &&
              strstr(qd_last_error(ctx), "token_embedding") && strstr(qd_last_error(ctx), "[49408, 32]"),
          "shape mismatch names tensor and shape: %s", qd_last_error(ctx));
    check(qd_st_get(ctx, &set, "no.such.tensor", 0, NULL, &g) != QD_OK && strstr(qd_last_error(ctx), "no.such.tensor"),
          "missing tensor named: %s", qd_last_error(ctx));
    qd_st_close(&set);
    qd_ctx_free(ctx);
    return test_summary();
}
