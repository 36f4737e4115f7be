/* Helpers shared by the benchmark programs (see bench_util.h). */
#define _GNU_SOURCE   /* program_invocation_short_name */
#include "bench_util.h"
#include "base/ctx.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", program_invocation_short_name);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory (%zu bytes)", n);
    return p;
}

void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) die("%s: %s", path, strerror(errno));
}

/* ---- parameter list ---- */

void add(plist *l, int kind, int ndim, const int64_t *shape, const char *fmt, ...) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 1024;
        l->p = realloc(l->p, sizeof *l->p * (size_t)l->cap);
        if (!l->p) die("out of memory");
    }
    pdesc *d = &l->p[l->n++];
    memset(d, 0, sizeof *d);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->name, sizeof d->name, fmt, ap);
    va_end(ap);
    d->kind = kind;
    d->ndim = ndim;
    memcpy(d->shape, shape, sizeof(int64_t) * (size_t)ndim);
}

void linear(plist *l, const char *pre, int64_t out, int64_t in, int bias) {
    int64_t w[2] = {out, in}, b[1] = {out};
    add(l, K_MATRIX, 2, w, "%s.weight", pre);
    if (bias) add(l, K_BIAS, 1, b, "%s.bias", pre);
}

void conv(plist *l, const char *pre, int64_t out, int64_t in, int k) {
    int64_t w[4] = {out, in, k, k}, b[1] = {out};
    add(l, K_MATRIX, 4, w, "%s.weight", pre);
    add(l, K_BIAS, 1, b, "%s.bias", pre);
}

void norm(plist *l, const char *pre, int64_t n) {
    int64_t s[1] = {n};
    add(l, K_NORM, 1, s, "%s.weight", pre);
    add(l, K_BIAS, 1, s, "%s.bias", pre);
}

int64_t numel(const pdesc *d) {
    int64_t n = 1;
    for (int i = 0; i < d->ndim; i++) n *= d->shape[i];
    return n;
}

/* ---- deterministic random values ---- */

uint64_t next64(rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Irwin-Hall sum of four 16-bit uniforms, rescaled. */
float gauss(rng *r) {
    uint64_t v = next64(r);
    float s = (float)(v & 0xffff) + (float)((v >> 16) & 0xffff) + (float)((v >> 32) & 0xffff) + (float)(v >> 48);
    return (s * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;
}

rng seeded(const char *name, uint64_t salt) {
    uint64_t h = 1469598103934665603ull ^ salt;
    for (const char *p = name; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
    rng r = {h};
    return r;
}

void values(const pdesc *d, float *dst) {
    rng r = seeded(d->name, 0);
    int64_t n = numel(d);
    float sd = d->kind == K_MATRIX ? 1.0f / sqrtf((float)(n / d->shape[0])) : 0.02f;
    for (int64_t i = 0; i < n; i++) dst[i] = d->kind == K_NORM ? 1.0f : sd * gauss(&r);
}

/* ---- measuring ---- */

long status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long v = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && line[kl] == ':') { v = atol(line + kl + 1); break; }
    fclose(f);
    return v;
}

int reset_hwm(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f) return -1;
    int ok = fputs("5", f) >= 0;
    return fclose(f) == 0 && ok ? 0 : -1;
}

double machine_busy_s(void) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return 0;
    unsigned long long v[10] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
                   &v[5], &v[6], &v[7], &v[8], &v[9]);
    fclose(f);
    if (n < 8) return 0;
    /* user nice system [idle iowait] irq softirq steal (guest time is inside user) */
    return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
}

double self_cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec + 1e-6 * (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

double thread_cpu_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

void wait_idle(double max_s, int verbose) {
    double t0 = qd_now();
    int said = 0;
    for (;;) {
        double b0 = machine_busy_s();
        usleep(1000000);
        double busy = machine_busy_s() - b0;
        if (busy < 0.2) return;
        if (qd_now() - t0 > max_s) {
            if (verbose) printf("idle-wait   machine still busy (%.0f%% of a CPU) after %.0f s: timing anyway\n", 100 * busy, max_s);
            return;
        }
        if (verbose && !said) printf("idle-wait   other processes are using %.0f%% of a CPU; waiting...\n", 100 * busy);
        said = 1;
    }
}
