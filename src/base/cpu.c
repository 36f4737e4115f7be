/* See cpu.h. */
#include "base/cpu.h"

#if defined(__x86_64__)
int qd_cpu_avx512(void) {
    static int has = -1;
    if (has < 0) {
        __builtin_cpu_init();
        has = __builtin_cpu_supports("avx512f") ? 1 : 0;
    }
    return has;
}

int qd_cpu_avx512bf16(void) {
    static int has = -1;
    if (has < 0) {
        __builtin_cpu_init();
        has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16") ? 1 : 0;
    }
    return has;
}
#else
int qd_cpu_avx512(void) { return 0; }
int qd_cpu_avx512bf16(void) { return 0; }
#endif
