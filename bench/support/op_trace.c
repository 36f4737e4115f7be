/* The op trace of a timed forward (see op_trace.h). */
#include "op_trace.h"
#include "bench_util.h"
#include "base/ctx.h"

#include <stdlib.h>
#include <string.h>

const char *const OP_NAMES[OP_COUNT] = {"conv2d", "linear", "attention"};

void trace_reset(trace_buf *t) {
    t->n = 0;
    memset(&t->misc, 0, sizeof t->misc);
}

static void misc_add(misc_ops *m, const char *op, double s) {
    int k = 0;
    while (k < m->n && strcmp(m->name[k], op)) k++;
    if (k == m->n) {
        if (m->n == MISC_MAX) return;
        snprintf(m->name[k], sizeof m->name[k], "%s", op);
        m->n++;
    }
    m->count[k]++;
    m->s[k] += s;
}

void on_op(void *user, const char *op, const int64_t *dims, int nd, double s) {
    trace_buf *t = user;
    int k = !strcmp(op, "conv2d") ? OP_CONV2D : !strcmp(op, "linear") ? OP_LINEAR : !strcmp(op, "attention") ? OP_ATTENTION : -1;
    if (k < 0) { misc_add(&t->misc, op, s); return; }
    if (nd > 12) return;
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 4096;
        t->r = realloc(t->r, sizeof *t->r * (size_t)t->cap);
        if (!t->r) die("out of memory");
    }
    oprec *r = &t->r[t->n++];
    r->op = k;
    r->nd = nd;
    memcpy(r->d, dims, sizeof(int64_t) * (size_t)nd);
    r->s = s;
    r->t_end = qd_now() - t->t0;
}

double op_flops(const oprec *r) {
    const int64_t *d = r->d;
    switch (r->op) {
    case OP_CONV2D: {   /* B, Cin, H, W, Cout, kh, kw, stride, pt, pb, pl, pr */
        int64_t Ho = (d[2] + d[8] + d[9] - d[5]) / d[7] + 1, Wo = (d[3] + d[10] + d[11] - d[6]) / d[7] + 1;
        return 2.0 * d[0] * d[4] * Ho * Wo * d[1] * d[5] * d[6];
    }
    case OP_LINEAR: return 2.0 * d[0] * d[1] * d[2];           /* tokens, in, out */
    default: return 4.0 * d[0] * d[1] * d[2] * d[3] * d[4];    /* B, heads, Lq, Lk, dh */
    }
}

void op_str(const oprec *r, char *buf, size_t n) {
    const int64_t *d = r->d;
    if (r->op == OP_CONV2D)
        snprintf(buf, n, "conv2d B%lld %lldx%lldx%lld -> %lld k%lld s%lld p%lld%s", (long long)d[0], (long long)d[1],
                 (long long)d[2], (long long)d[3], (long long)d[4], (long long)d[5], (long long)d[7], (long long)d[8],
                 (d[8] == d[9] && d[9] == d[10] && d[10] == d[11]) ? "" : "(asym)");
    else if (r->op == OP_LINEAR)
        snprintf(buf, n, "linear M%lld %lld -> %lld", (long long)d[0], (long long)d[1], (long long)d[2]);
    else
        snprintf(buf, n, "attention B%lld h%lld Lq%lld Lk%lld dh%lld", (long long)d[0], (long long)d[1],
                 (long long)d[2], (long long)d[3], (long long)d[4]);
}

static int same_shape(const oprec *a, const oprec *b) {
    return a->op == b->op && a->nd == b->nd && !memcmp(a->d, b->d, sizeof(int64_t) * (size_t)a->nd);
}

static int cmp_time_desc(const void *a, const void *b) {
    double x = ((const shape_sum *)a)->s, y = ((const shape_sum *)b)->s;
    return x < y ? 1 : x > y ? -1 : 0;
}

void trace_summarize(const trace_buf *tb, trace_summary *s) {
    memset(s, 0, sizeof *s);
    s->misc = tb->misc;
    s->ss = calloc((size_t)tb->n + 1, sizeof *s->ss);
    if (!s->ss) die("out of memory");
    for (int i = 0; i < tb->n; i++) {
        const oprec *r = &tb->r[i];
        double f = op_flops(r);
        s->cls_s[r->op] += r->s; s->cls_f[r->op] += f; s->cls_n[r->op]++;
        s->flops += f;
        s->op_s += r->s;
        int k = 0;
        while (k < s->nss && !same_shape(&s->ss[k].key, r)) k++;
        if (k == s->nss) { s->ss[s->nss].key = *r; s->nss++; }
        s->ss[k].count++; s->ss[k].s += r->s; s->ss[k].flops += f;
    }
    qsort(s->ss, (size_t)s->nss, sizeof *s->ss, cmp_time_desc);
}

void trace_print(const trace_summary *s, int first, double best, const char *untraced) {
    printf("per op class, fastest step (%% of its %.3f s):\n", best);
    printf("%-10s %6s %10s %7s %10s %9s\n", "op", "count", "seconds", "% step", "GFLOP", "GFLOP/s");
    for (int k = first; k < OP_COUNT; k++)
        printf("%-10s %6d %10.3f %6.1f%% %10.1f %9.1f\n", OP_NAMES[k], s->cls_n[k], s->cls_s[k], 100 * s->cls_s[k] / best,
               s->cls_f[k] / 1e9, s->cls_s[k] > 0 ? s->cls_f[k] / 1e9 / s->cls_s[k] : 0);
    double misc = 0;
    for (int k = 0; k < s->misc.n; k++) {
        printf("%-10s %6d %10.3f %6.1f%%\n", s->misc.name[k], s->misc.count[k], s->misc.s[k], 100 * s->misc.s[k] / best);
        misc += s->misc.s[k];
    }
    double rest = best - s->op_s - misc;
    printf("%-10s %6s %10.3f %6.1f%%   (%s: untraced)\n", "other", "", rest, 100 * rest / best, untraced);
    printf("\nmost expensive op shapes (fastest timed step):\n");
    printf("%6s %6s %9s %8s  %s\n", "% step", "count", "seconds", "GFLOP/s", "shape");
    for (int k = 0; k < s->nss && k < 10; k++) {
        char str[160];
        op_str(&s->ss[k].key, str, sizeof str);
        printf("%5.1f%% %6d %9.3f %8.1f  %s\n", 100 * s->ss[k].s / best, s->ss[k].count, s->ss[k].s,
               s->ss[k].s > 0 ? s->ss[k].flops / 1e9 / s->ss[k].s : 0, str);
    }
}

void trace_write_ops(FILE *f, const trace_buf *tb) {
    for (int i = 0; i < tb->n; i++) {
        const oprec *r = &tb->r[i];
        fprintf(f, "{\"op\": \"%s\", \"dims\": [", OP_NAMES[r->op]);
        for (int k = 0; k < r->nd; k++) fprintf(f, k ? ", %lld" : "%lld", (long long)r->d[k]);
        fprintf(f, "], \"s\": %.7f}%s\n", r->s, i + 1 < tb->n ? "," : "");
    }
}
