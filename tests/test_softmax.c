/* Vectorised softmax against a double-precision reference: random rows of odd
 * lengths (tail masks), large magnitudes, and fully masked (-inf) rows. */
#include "testutil.h"
#include "tensor/ops.h"

#include <math.h>
#include <stdlib.h>

int main(void) {
    unsigned s = 12345;
    static const int64_t lens[] = {1, 7, 16, 17, 77, 100, 4096};
    for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
        int64_t N = lens[li], M = 3;
        float *x = malloc(sizeof(float) * (size_t)(M * N));
        double *ref = malloc(sizeof(double) * (size_t)(M * N));
        for (int64_t i = 0; i < M * N; i++) {
            s = s * 1103515245u + 12345u;
            x[i] = ((float)((s >> 8) & 0xffff) / 65536.0f - 0.5f) * (i % 3 == 0 ? 200.0f : 8.0f);
        }
        if (N > 2) x[N + 1] = -INFINITY;           /* one masked entry */
        for (int64_t r = 0; r < M; r++) {
            double mx = -INFINITY, sum = 0;
            for (int64_t i = 0; i < N; i++) if (x[r * N + i] > mx) mx = x[r * N + i];
            for (int64_t i = 0; i < N; i++) sum += exp((double)x[r * N + i] - mx);
            for (int64_t i = 0; i < N; i++) ref[r * N + i] = exp((double)x[r * N + i] - mx) / sum;
        }
        qd_softmax_rows(x, M, N);
        double worst = 0;
        for (int64_t i = 0; i < M * N; i++) {
            double e = fabs(x[i] - ref[i]) / (ref[i] > 1e-30 ? ref[i] : 1e-30);
            if (ref[i] < 1e-30) e = fabs(x[i]);
            if (!(e <= worst)) worst = e;
        }
        check(worst < 2e-6, "softmax N=%lld: max relative error %.2g (tol 2e-6)", (long long)N, worst);
        free(x);
        free(ref);
    }
    float masked[5] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    qd_softmax_rows(masked, 1, 5);
    check(masked[0] == 0 && masked[4] == 0, "fully masked row gives zeros, not NaN");
    return test_summary();
}
