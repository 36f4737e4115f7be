/* Fast Hadamard transform with SDNQ's matrix: one butterfly pass per Kronecker
 * factor. All factors are the same matrix, so which digit of the index each pass
 * handles does not matter. */
#include "quant/hadamard.h"

#include <math.h>

static int is_power_of_4(int64_t g) {
    int bits = 0;
    while (((int64_t)1 << bits) < g) bits++;
    return (bits & 1) == 0;
}

void qd_hadamard(float *x, int64_t g) {
    if (g < 2) return;
    if (is_power_of_4(g)) {
        /* each 4x4 factor is orthonormal after the 1/2, which is exact in float */
        for (int64_t s = 1; s < g; s *= 4)
            for (int64_t b = 0; b < g; b += 4 * s)
                for (int64_t i = b; i < b + s; i++) {
                    float a0 = x[i], a1 = x[i + s], a2 = x[i + 2 * s], a3 = x[i + 3 * s];
                    x[i] = 0.5f * (a0 + a1 + a2 - a3);
                    x[i + s] = 0.5f * (a0 + a1 - a2 + a3);
                    x[i + 2 * s] = 0.5f * (a0 - a1 + a2 + a3);
                    x[i + 3 * s] = 0.5f * (-a0 + a1 + a2 + a3);
                }
        return;
    }
    /* Sylvester: +-1 butterflies, then one scale; sdnq builds H with 1/sqrt(g) rounded */
    for (int64_t s = 1; s < g; s *= 2)
        for (int64_t b = 0; b < g; b += 2 * s)
            for (int64_t i = b; i < b + s; i++) {
                float a = x[i], c = x[i + s];
                x[i] = a + c;
                x[i + s] = a - c;
            }
    float scale = (float)(1.0 / sqrt((double)g));
    for (int64_t i = 0; i < g; i++) x[i] *= scale;
}
