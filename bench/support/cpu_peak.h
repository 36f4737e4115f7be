/* Register-only chains of fused multiply-adds for measuring a CPU's peak rates
 * (bench_peak, bench_gemm, bench_sdnq). Each returns a value derived from every chain,
 * so the compiler cannot drop them; callers check __builtin_cpu_supports first. */
#ifndef QD_BENCH_CPU_PEAK_H
#define QD_BENCH_CPU_PEAK_H

#define FMA_CHAINS 12    /* > FMA latency (4) x FMA pipes (2): keeps both pipes full */
#define BF16_CHAINS 24   /* more than vdpbf16ps latency x 2 pipes, whatever the latency is here */

/* iters x FMA_CHAINS vfmadd on 512-bit (16 lanes, 32 FLOP each) / 256-bit (8 lanes) vectors */
float fma512_chains(long iters);
float fma256_chains(long iters);
/* iters x BF16_CHAINS vdpbf16ps (AVX512_BF16: 16 lanes x 2 products + their sum = 64 FLOP) */
float bf16_chains(long iters);

/* The measured peak of `threads` threads running the chains above at once, best of 5,
 * in GFLOP/s: fp32 FMA (bf16 = 0) or vdpbf16ps (bf16 = 1). 0 when the CPU lacks the ISA. */
double cpu_peak_gflops(int threads, int bf16);

#endif
