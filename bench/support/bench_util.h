/* Helpers shared by the benchmark programs in bench/ (linked into every bench_* executable):
 * fatal errors, the parameter list a bench writes, its deterministic random values, and
 * the machine/process measurements (CPU time, VmHWM, waiting for an idle machine). */
#ifndef QD_BENCH_UTIL_H
#define QD_BENCH_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Prints "PROGRAM: message" to stderr and exits with status 2. */
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void *xmalloc(size_t n);   /* dies when out of memory */
void write_text(const char *path, const char *text);   /* dies on failure */

/* ---- a model's parameter list, in the order the bench writes it ---- */

enum { K_MATRIX, K_NORM, K_BIAS };   /* weight matrix / conv kernel, norm scale, bias */

typedef struct {
    char name[128];
    int ndim;
    int64_t shape[4];
    int kind;
} pdesc;

typedef struct { pdesc *p; int n, cap; } plist;

void add(plist *l, int kind, int ndim, const int64_t *shape, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
void linear(plist *l, const char *pre, int64_t out, int64_t in, int bias);   /* PRE.weight [out, in] (+ PRE.bias) */
void conv(plist *l, const char *pre, int64_t out, int64_t in, int k);        /* PRE.weight [out, in, k, k], PRE.bias */
void norm(plist *l, const char *pre, int64_t n);                             /* PRE.weight (scale), PRE.bias */
int64_t numel(const pdesc *d);

/* ---- deterministic random values ---- */

typedef struct { uint64_t s; } rng;   /* splitmix64; any state is a valid seed */

uint64_t next64(rng *r);
float gauss(rng *r);                               /* approximately N(0, 1) */
rng seeded(const char *name, uint64_t salt);       /* a stream per name (FNV-1a of it, xor salt) */
/* The fp32 values of a parameter, a stream seeded by its name: matrices N(0, 1/fan_in),
 * norm scales 1, biases N(0, 0.02^2). Identical in every model a bench writes. */
void values(const pdesc *d, float *dst);

/* ---- measuring ---- */

long status_kb(const char *key);   /* a "Key: N kB" line of /proc/self/status (VmHWM, VmRSS, ...); -1 if absent */
int reset_hwm(void);               /* VmHWM := current RSS (Linux >= 4.0); 0 on success */
double machine_busy_s(void);       /* busy CPU seconds of the whole machine (/proc/stat) */
double self_cpu_s(void);           /* this process's user + system CPU seconds */
double thread_cpu_s(void);         /* the calling thread's CPU seconds (not lowered by time slicing) */
/* Waits (at most max_s seconds) until the machine has been idle for a second (less than
 * a fifth of a CPU busy). verbose: say on stdout that it waits, and when it gives up. */
void wait_idle(double max_s, int verbose);

#endif
