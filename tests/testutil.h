/* Shared helpers for the C tests: fixture paths, golden tensors, tolerance checks.
 * Each test binary prints one line per check and ends with "N passed, N failed". */
#ifndef QD_TESTUTIL_H
#define QD_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "qdiff.h"

/* Path under tests/fixtures (from $QD_FIXTURES, set by ctest). Static buffer, rotating 8 slots. */
const char *fixture(const char *rel);

/* Load a tensor from a safetensors file converted to float32 (any float/int dtype).
 * Returns malloc'd data or NULL (prints why). shape/ndim optional. */
float *load_f32(const char *path, const char *name, int64_t *shape, int *ndim, size_t *numel);
/* Raw bytes of a tensor (for U8/I64 goldens). malloc'd copy. */
void *load_raw(const char *path, const char *name, size_t *nbytes);

double rel_l2(const float *a, const float *ref, size_t n);
double max_abs_diff(const float *a, const float *ref, size_t n);
double max_abs(const float *ref, size_t n);

/* Record a check: prints "ok"/"FAIL" with the name. */
void check(int cond, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Component tolerance: rel L2 <= rel_tol and max-abs <= abs_frac * max|ref|. */
void check_close(const char *what, const float *got, const float *ref, size_t n,
                 double rel_tol, double abs_frac);
/* Print the summary line and return the process exit status. */
int test_summary(void);

#endif
