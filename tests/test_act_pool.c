/* The step arena (base/act_pool.h): a forward-like sequence of allocations runs on
 * malloc the first time, is replayed from one arena afterwards (no malloc, buffers
 * whose lifetimes overlap never share bytes, contents survive), the arena is no larger
 * than the sum of what is live at once rounded to 2 MB, a changed sequence falls back
 * to malloc and is re-planned, trim frees the arena, and a buffer kept past the end
 * of a forward is not handed out again. ASan checks leaks and overlaps by use. */
#include "testutil.h"
#include "base/act_pool.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Allocates and frees in a fixed pattern, filling each buffer with its index and
 * checking every live buffer still holds it before freeing. Returns 1 when intact. */
static int fake_forward(qd_ctx *ctx, int64_t scale) {
    int64_t sizes[8] = {4096, 1 << 20, 3 << 20, 1 << 20, 77, 3 << 20, 5000, 1 << 18};
    float *p[8] = {0};
    int ok = 1;
    qd_act_begin(ctx);
    for (int i = 0; i < 8; i++) {
        int64_t n = sizes[i] * scale;
        p[i] = qd_act_floats(ctx, n);
        if (!p[i]) { ok = 0; continue; }
        for (int64_t k = 0; k < n; k++) p[i][k] = (float)i;
        if (i % 2 == 1 && p[i - 1]) {   /* free the previous one after checking it */
            int64_t m = sizes[i - 1] * scale;
            for (int64_t k = 0; k < m; k++) ok &= p[i - 1][k] == (float)(i - 1);
            qd_act_free(ctx, p[i - 1]);
            p[i - 1] = NULL;
        }
    }
    for (int i = 0; i < 8; i++)
        if (p[i]) {
            int64_t m = sizes[i] * scale;
            for (int64_t k = 0; k < m; k++) ok &= p[i][k] == (float)i;
            qd_act_free(ctx, p[i]);
        }
    qd_act_end(ctx);
    return ok;
}

int main(void) {
    qd_ctx *ctx = qd_ctx_new(1);
    qd_act_stats st;
    float *out = qd_act_floats(ctx, 100);    /* outside a forward: plain malloc */
    check(out && ((uintptr_t)out % 64) == 0, "a buffer outside a forward is 64-byte aligned");
    qd_act_free(ctx, out);
    qd_act_get_stats(ctx, &st);
    long fresh0 = st.fresh;

    check(fake_forward(ctx, 1), "forward 1 (recorded on malloc): every buffer intact");
    qd_act_get_stats(ctx, &st);
    long fresh1 = st.fresh;
    check(st.plans == 1 && fresh1 - fresh0 == 8 && st.reused == 0, "forward 1: 8 mallocs, one plan (%ld, %ld)",
          fresh1 - fresh0, st.plans);
    /* live at once at most: 3M + 1M + ... floats; the plan must fit in peak rounded to 2 MB */
    check(st.planned >= st.peak_live && st.planned <= ((st.peak_live + (2u << 20) - 1) / (2u << 20) + 1) * (2u << 20),
          "plan %zu bytes for a peak of %zu live bytes", st.planned, st.peak_live);
    for (int i = 0; i < 3; i++) check(fake_forward(ctx, 1), "replayed forward %d: every buffer intact", i + 2);
    qd_act_get_stats(ctx, &st);
    check(st.fresh == fresh1 && st.reused == 24 && st.plans == 1,
          "replays allocate nothing: %ld mallocs, %ld arena buffers, %ld plan(s)", st.fresh, st.reused, st.plans);
    check(st.held == st.planned, "the arena is the planned size (%zu)", st.held);

    check(fake_forward(ctx, 2), "a forward with other sizes: every buffer intact (malloc fallback)");
    qd_act_get_stats(ctx, &st);
    check(st.plans == 2 && st.fresh == fresh1 + 8, "it was re-planned (%ld plans, %ld mallocs)", st.plans, st.fresh);
    check(fake_forward(ctx, 2), "and then replayed");
    qd_act_get_stats(ctx, &st);
    check(st.fresh == fresh1 + 8 && st.reused == 32, "no malloc in that replay (%ld, %ld)", st.fresh, st.reused);

    qd_act_trim(ctx);
    qd_act_get_stats(ctx, &st);
    check(st.held == 0 && st.planned > 0, "trim frees the arena and keeps the plan");
    check(fake_forward(ctx, 2), "the next forward allocates the arena again");
    qd_act_get_stats(ctx, &st);
    check(st.held == st.planned && st.fresh == fresh1 + 8, "from the kept plan (%ld mallocs)", st.fresh);

    /* a buffer that outlives its forward keeps its bytes */
    qd_act_begin(ctx);
    float *keep = qd_act_floats(ctx, 4096);
    for (int k = 0; k < 4096; k++) keep[k] = 7.0f;
    qd_act_end(ctx);
    check(fake_forward(ctx, 2) && fake_forward(ctx, 1), "forwards after a leaked buffer run intact");
    int intact = 1;
    for (int k = 0; k < 4096; k++) intact &= keep[k] == 7.0f;
    check(intact, "the buffer kept past its forward was not handed out again");
    qd_act_free(ctx, keep);
    qd_act_free(ctx, NULL);                 /* ignored */
    qd_ctx_free(ctx);
    return test_summary();
}
