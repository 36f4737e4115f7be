/* CPU features the kernels dispatch on, read once from CPUID (x86-64; 0 elsewhere). */
#ifndef QD_BASE_CPU_H
#define QD_BASE_CPU_H

int qd_cpu_avx512(void);       /* AVX-512F */
int qd_cpu_avx512bf16(void);   /* AVX-512F and AVX512_BF16 (vdpbf16ps) */

#endif
