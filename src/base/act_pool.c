/* The step arena (see act_pool.h). One forward is a sequence of events, alloc(size) or
 * free(id), numbered by time; the plan is the recorded sequence with an arena offset
 * per allocation. */
#include "base/act_pool.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define ALIGN 64
#define HUGE_SZ ((size_t)2 << 20)

typedef struct {
    size_t size, off;
    int t_alloc, t_free;    /* event times; t_free -1 while live */
    void *p;                /* this forward's pointer */
    int in_arena;
} rec;

typedef struct { void *p; size_t size; int live; } old_arena;   /* still referenced after a replan */

struct qd_act_pool {
    pthread_mutex_t mu;
    int depth;              /* begin/end nesting */
    int t;                  /* event time in the current forward */
    int replay;             /* the current forward still matches the plan */
    rec *cur;               /* the current forward's allocations, by id */
    int ncur, capcur;
    rec *plan;              /* the plan: recorded allocations with offsets */
    int nplan;
    size_t plan_size, peak_live;
    char *arena;
    size_t arena_size;
    int arena_live;         /* arena buffers handed out and not yet freed */
    old_arena *old;
    int nold;
    qd_act_stats st;
};

static size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

static qd_act_pool *pool_of(qd_ctx *ctx) {
    if (!ctx->acts) {
        qd_act_pool *p = calloc(1, sizeof *p);
        if (!p) return NULL;
        pthread_mutex_init(&p->mu, NULL);
        ctx->acts = p;
    }
    return ctx->acts;
}

static void *arena_new(size_t size) {
    void *a = NULL;
    if (posix_memalign(&a, HUGE_SZ, size) != 0) return NULL;
#ifdef MADV_HUGEPAGE
    madvise(a, size, MADV_HUGEPAGE);   /* advice only: failure is harmless */
#endif
    return a;
}

/* Drop the arena; if buffers of it are still out, keep it until they come back. */
static void arena_release(qd_act_pool *p) {
    if (!p->arena) return;
    if (p->arena_live == 0) {
        free(p->arena);
    } else {
        old_arena *o = realloc(p->old, sizeof *o * (size_t)(p->nold + 1));
        if (o) {
            p->old = o;
            p->old[p->nold++] = (old_arena){p->arena, p->arena_size, p->arena_live};
        }   /* else: leak rather than free memory that is in use */
    }
    p->arena = NULL;
    p->arena_size = 0;
    p->arena_live = 0;
    p->st.held = 0;
}

void qd_act_begin(qd_ctx *ctx) {
    qd_act_pool *p = pool_of(ctx);
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    if (p->depth++ == 0) {
        p->t = 0;
        p->ncur = 0;
        p->replay = p->nplan > 0;
        if (p->replay && !p->arena && p->arena_live == 0) {
            p->arena = arena_new(p->plan_size);
            p->arena_size = p->arena ? p->plan_size : 0;
            p->st.held = p->arena_size;
        }
        if (!p->arena) p->replay = 0;
    }
    pthread_mutex_unlock(&p->mu);
}

/* Offsets for the recorded allocations: largest first, each at the lowest offset that
 * overlaps no already placed allocation live at the same time. */
static int cmp_size_desc(const void *a, const void *b) {
    const rec *x = *(const rec *const *)a, *y = *(const rec *const *)b;
    return x->size < y->size ? 1 : x->size > y->size ? -1 : x->t_alloc - y->t_alloc;
}

static int make_plan(qd_act_pool *p) {
    int n = p->ncur;
    rec *plan = malloc(sizeof *plan * (size_t)(n ? n : 1));
    rec **order = malloc(sizeof *order * (size_t)(n ? n : 1));
    rec **placed = malloc(sizeof *placed * (size_t)(n ? n : 1));
    if (!plan || !order || !placed) { free(plan); free(order); free(placed); return -1; }
    memcpy(plan, p->cur, sizeof *plan * (size_t)n);
    for (int i = 0; i < n; i++) order[i] = &plan[i];
    qsort(order, (size_t)n, sizeof *order, cmp_size_desc);
    size_t total = 0;
    int np = 0;
    for (int i = 0; i < n; i++) {
        rec *r = order[i];
        size_t off = 0;
        for (int again = 1; again;) {   /* bump past every conflicting placement until none is left */
            again = 0;
            for (int j = 0; j < np; j++) {
                const rec *q = placed[j];
                int overlap_t = r->t_alloc < q->t_free && q->t_alloc < r->t_free;
                if (overlap_t && off < q->off + q->size && q->off < off + r->size) {
                    off = q->off + q->size;
                    again = 1;
                }
            }
        }
        r->off = off;
        placed[np++] = r;
        if (off + r->size > total) total = off + r->size;
    }
    /* the most bytes live at once, for the stats */
    size_t live = 0, peak = 0;
    for (int t = 0; t < 2 * n; t++) {
        for (int i = 0; i < n; i++) {
            if (plan[i].t_alloc == t) live += plan[i].size;
            if (plan[i].t_free == t) live -= plan[i].size;
        }
        if (live > peak) peak = live;
    }
    free(order);
    free(placed);
    free(p->plan);
    p->plan = plan;
    p->nplan = n;
    p->plan_size = round_up(total ? total : ALIGN, HUGE_SZ);
    p->peak_live = peak;
    p->st.plans++;
    return 0;
}

void qd_act_end(qd_ctx *ctx) {
    qd_act_pool *p = ctx->acts;
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    if (p->depth > 0 && --p->depth == 0) {
        int all_freed = 1;
        for (int i = 0; i < p->ncur; i++)
            if (p->cur[i].t_free < 0) all_freed = 0;
        int matched = p->replay && p->ncur == p->nplan;
        if (!matched && all_freed && p->ncur > 0) {
            /* a new or changed forward: plan it; the old arena goes (its buffers are all back) */
            if (make_plan(p) == 0) arena_release(p);
        } else if (!all_freed) {
            arena_release(p);   /* buffers outlive the forward: never hand their bytes out again */
            free(p->plan);
            p->plan = NULL;
            p->nplan = 0;
        }
        p->replay = 0;
    }
    pthread_mutex_unlock(&p->mu);
}

void *qd_act_alloc(qd_ctx *ctx, size_t bytes) {
    size_t size = round_up(bytes ? bytes : 1, ALIGN);
    qd_act_pool *p = pool_of(ctx);
    void *r = NULL;
    if (p) pthread_mutex_lock(&p->mu);
    int inside = p && p->depth > 0;
    if (inside && p->ncur == p->capcur) {
        int cap = p->capcur ? 2 * p->capcur : 256;
        rec *c = realloc(p->cur, sizeof *c * (size_t)cap);
        if (!c) { pthread_mutex_unlock(&p->mu); qd_fail(ctx, QD_ERR_NOMEM, "out of memory"); return NULL; }
        p->cur = c;
        p->capcur = cap;
    }
    int id = inside ? p->ncur : -1;
    if (inside && p->replay) {
        const rec *pl = id < p->nplan ? &p->plan[id] : NULL;
        if (pl && pl->size == size && pl->t_alloc == p->t) {
            r = p->arena + pl->off;
            p->arena_live++;
            p->st.reused++;
        } else {
            p->replay = 0;
        }
    }
    int in_arena = r != NULL;
    if (!r) {
        if (posix_memalign(&r, ALIGN, size) != 0) r = NULL;
        if (r && p) p->st.fresh++;
    }
    if (r && inside) p->cur[p->ncur++] = (rec){size, 0, p->t++, -1, r, in_arena};
    if (p) pthread_mutex_unlock(&p->mu);
    if (!r) qd_fail(ctx, QD_ERR_NOMEM, "out of memory allocating %zu bytes of activations", bytes);
    return r;
}

void qd_act_free(qd_ctx *ctx, void *ptr) {
    if (!ptr) return;
    qd_act_pool *p = ctx->acts;
    if (!p) { free(ptr); return; }
    pthread_mutex_lock(&p->mu);
    if (p->depth > 0)
        for (int i = p->ncur - 1; i >= 0; i--)
            if (p->cur[i].p == ptr && p->cur[i].t_free < 0) {
                if (p->replay && !(i < p->nplan && p->plan[i].t_free == p->t)) p->replay = 0;
                p->cur[i].t_free = p->t++;
                break;
            }
    char *c = ptr;
    if (p->arena && c >= p->arena && c < p->arena + p->arena_size) {
        p->arena_live--;
    } else {
        int k = 0;
        while (k < p->nold && !(c >= (char *)p->old[k].p && c < (char *)p->old[k].p + p->old[k].size)) k++;
        if (k < p->nold) {
            if (--p->old[k].live == 0) {
                free(p->old[k].p);
                p->old[k] = p->old[--p->nold];
            }
        } else {
            free(ptr);
        }
    }
    pthread_mutex_unlock(&p->mu);
}

void qd_act_trim(qd_ctx *ctx) {
    qd_act_pool *p = ctx->acts;
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    if (p->depth == 0) arena_release(p);
    pthread_mutex_unlock(&p->mu);
}

void qd_act_get_stats(qd_ctx *ctx, qd_act_stats *s) {
    qd_act_pool *p = ctx->acts;
    memset(s, 0, sizeof *s);
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    *s = p->st;
    s->planned = p->nplan ? p->plan_size : 0;
    s->peak_live = p->peak_live;
    pthread_mutex_unlock(&p->mu);
}

void qd_act_pool_destroy(qd_ctx *ctx) {
    qd_act_pool *p = ctx->acts;
    if (!p) return;
    free(p->arena);
    for (int i = 0; i < p->nold; i++) free(p->old[i].p);
    free(p->old);
    free(p->cur);
    free(p->plan);
    pthread_mutex_destroy(&p->mu);
    free(p);
    ctx->acts = NULL;
}
