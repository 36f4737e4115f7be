/* Measured fp32 FMA and bf16 dot-product peaks of this machine: every thread runs
 * independent chains of 512-bit (AVX-512F) or 256-bit (AVX2+FMA) fused multiply-adds,
 * or of AVX512_BF16 vdpbf16ps, from registers, no memory traffic. The result is the ceiling the GEMM kernels can approach, and
 * together with the nominal "cores x GHz x FLOP/cycle" it shows the clock the cores
 * really run at (a VM's lscpu often shows only the base/TSC frequency).
 *
 *   bench_peak [--threads N] [--seconds S] [--idle-wait S]
 *                                  (default: all online cores, 0.5 s, 60 s)
 *
 * Each figure is the best of several runs, each started once the machine is idle
 * (other processes can only lower it). The
 * lines "peak_gflops X" (AVX-512 fp32, all threads) and "peak_bf16_gflops X" are for
 * scripts. */
#include "cpu_peak.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

#define ITERS 1000000L

typedef struct {
    int wide;   /* 0 AVX2 FMA, 1 AVX-512 FMA, 2 AVX-512 BF16 */
    double seconds, flops;
    float sink;
} job;

static void *worker(void *arg) {
    job *j = arg;
    double t0 = now(), lanes = j->wide ? 16 : 8;
    long rounds = 0, bf_iters = ITERS * FMA_CHAINS / BF16_CHAINS;
    do {
        j->sink += j->wide == 2 ? bf16_chains(bf_iters) : j->wide ? fma512_chains(ITERS) : fma256_chains(ITERS);
        rounds++;
    } while (now() - t0 < j->seconds);
    j->seconds = now() - t0;
    j->flops = (j->wide == 2 ? 4.0 * lanes * BF16_CHAINS * (double)bf_iters : 2.0 * lanes * FMA_CHAINS * (double)ITERS) *
               (double)rounds;
    return NULL;
}

static double idle_wait = 60;   /* --idle-wait */

/* Wait (at most idle_wait s) for the other processes on the machine to go quiet. */
static void wait_idle(void) {
    double t0 = now();
    while (now() - t0 < idle_wait) {
        unsigned long long a[8] = {0}, b[8] = {0};
        FILE *f = fopen("/proc/stat", "r");
        if (!f || fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &a[0], &a[1], &a[2], &a[3], &a[4], &a[5],
                         &a[6], &a[7]) != 8) { if (f) fclose(f); return; }
        fclose(f);
        usleep(500000);
        f = fopen("/proc/stat", "r");
        if (!f || fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5],
                         &b[6], &b[7]) != 8) { if (f) fclose(f); return; }
        fclose(f);
        unsigned long long busy = (b[0] + b[1] + b[2] + b[5] + b[6] + b[7]) - (a[0] + a[1] + a[2] + a[5] + a[6] + a[7]);
        if ((double)busy / (double)sysconf(_SC_CLK_TCK) < 0.1) return;   /* < 20% of a CPU over 0.5 s */
    }
}

static double measure(int threads, int wide, double seconds) {
    wait_idle();
    pthread_t th[256];
    job jobs[256];
    for (int i = 0; i < threads; i++) {
        memset(&jobs[i], 0, sizeof jobs[i]);
        jobs[i].wide = wide;
        jobs[i].seconds = seconds;
        pthread_create(&th[i], NULL, worker, &jobs[i]);
    }
    double total = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
        total += jobs[i].flops / jobs[i].seconds;
    }
    return total;
}

int main(int argc, char **argv) {
    int threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    double seconds = 0.5;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seconds")) seconds = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--idle-wait")) idle_wait = atof(argv[i + 1]);
    }
    if (threads < 1 || threads > 256) threads = 1;
    __builtin_cpu_init();
    printf("threads %d\n", threads);
    /* best of several: a busy neighbour only ever lowers a measurement */
    if (__builtin_cpu_supports("avx512f")) {
        double one = 0, all = 0;
        for (int r = 0; r < 5; r++) {
            double o = measure(1, 1, seconds), a = measure(threads, 1, seconds);
            if (o > one) one = o;
            if (a > all) all = a;
        }
        printf("avx512 fp32 FMA peak: %.1f GFLOP/s on 1 core (= %.2f GHz at 64 FLOP/cycle), %.1f GFLOP/s on %d\n",
               one / 1e9, one / 64e9, all / 1e9, threads);
        printf("peak_gflops %.1f\n", all / 1e9);
    }
    if (__builtin_cpu_supports("avx512bf16")) {
        double one = 0, all = 0;
        for (int r = 0; r < 5; r++) {
            double o = measure(1, 2, seconds), a = measure(threads, 2, seconds);
            if (o > one) one = o;
            if (a > all) all = a;
        }
        printf("avx512 bf16 vdpbf16ps peak: %.1f GFLOP/s on 1 core (= %.2f GHz at 128 FLOP/cycle), %.1f GFLOP/s on %d\n",
               one / 1e9, one / 128e9, all / 1e9, threads);
        printf("peak_bf16_gflops %.1f\n", all / 1e9);
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        double one = 0, all = 0;
        for (int r = 0; r < 3; r++) {
            double o = measure(1, 0, seconds), a = measure(threads, 0, seconds);
            if (o > one) one = o;
            if (a > all) all = a;
        }
        printf("avx2   fp32 FMA peak: %.1f GFLOP/s on 1 core (= %.2f GHz at 32 FLOP/cycle), %.1f GFLOP/s on %d\n",
               one / 1e9, one / 32e9, all / 1e9, threads);
    }
    return 0;
}
