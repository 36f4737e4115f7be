/* The op trace of a timed forward (ctx->trace): each conv2d / linear / attention call's
 * dims and seconds, its FLOPs, the per-class and per-shape summary and their report
 * (bench_unet, bench_flux). */
#ifndef QD_BENCH_OP_TRACE_H
#define QD_BENCH_OP_TRACE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum { OP_CONV2D, OP_LINEAR, OP_ATTENTION, OP_COUNT };
extern const char *const OP_NAMES[OP_COUNT];

typedef struct {
    int op;             /* OP_* */
    int nd;
    int64_t d[12];      /* dims as the library traces them */
    double s, t_end;    /* seconds; end time relative to the trace's t0 */
} oprec;

/* The passes between the GEMMs the library also traces (group_norm, layer_norm, geglu,
 * silu, add, copy): seconds and calls per name, kept apart from the GEMM records. */
enum { MISC_MAX = 12 };
typedef struct {
    char name[MISC_MAX][16];
    int count[MISC_MAX];
    double s[MISC_MAX];
    int n;
} misc_ops;

typedef struct {
    oprec *r;
    int n, cap;
    double t0;          /* qd_now() at the start of the step */
    misc_ops misc;
} trace_buf;

void trace_reset(trace_buf *t);   /* empty it for the next step (keeps the allocation) */

/* ctx->trace callback: appends to the trace_buf `user`. */
void on_op(void *user, const char *op, const int64_t *dims, int nd, double s);
double op_flops(const oprec *r);
void op_str(const oprec *r, char *buf, size_t n);

typedef struct { oprec key; int count; double s, flops; } shape_sum;

typedef struct {
    double cls_s[OP_COUNT], cls_f[OP_COUNT], flops, op_s;   /* per class seconds, FLOPs; totals */
    int cls_n[OP_COUNT];
    shape_sum *ss;      /* per distinct shape, slowest first */
    int nss;
    misc_ops misc;
} trace_summary;

void trace_summarize(const trace_buf *tb, trace_summary *s);   /* s->ss is malloc'd */
/* The per-class table for classes first..OP_COUNT-1 (% of the step `best` seconds), the
 * traced passes between them, the untraced rest (`untraced` says what it is), and the
 * ten most expensive shapes. */
void trace_print(const trace_summary *s, int first, double best, const char *untraced);
/* The trace's ops as JSON array entries, one a line (the format bench/torch_ops.py reads). */
void trace_write_ops(FILE *f, const trace_buf *tb);

#endif
