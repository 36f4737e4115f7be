/* Shared helpers for the C tests: fixture paths, golden tensors, tolerance checks.
 * Each test binary prints one line per check and ends with "N passed, N failed". */
#ifndef QD_TESTUTIL_H
#define QD_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

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

/* ---- contexts ---- */

/* qd_ctx_new(n_threads) set to QD_PRECISION_FP32: the library's default is AUTO (bf16 on
 * CPUs with AVX512_BF16), while the goldens and the tests' tolerances are fp32's. Tests
 * of bf16 set it themselves (test_pipeline_bf16, test_gemm_kernels, test_attention). */
qd_ctx *test_ctx_new(int n_threads);

/* qd_model_open of fixture(rel) (e.g. "models/sd15-tiny"), recorded as a check; NULL if it failed. */
qd_model *test_open_model(qd_ctx *ctx, const char *rel);

/* ---- pipeline golden cases ---- */

/* qd_gen_params for one entry of a goldens cases.json "pipelines" list, as diffusers ran
 * it: prompt, negative prompt, steps, guidance (FLUX: the embedded guidance, no CFG),
 * guidance_rescale, seed, size, max_sequence_length, scheduler class ("Class(args)"
 * names the folder's own scheduler: NULL) and scheduler_kwargs. p's strings point into c.
 * Returns the scheduler options JSON p->scheduler_options points at (NULL if none):
 * free() it after the run. */
char *golden_case_params(const qd_model *m, const cJSON *c, qd_gen_params *p);

/* ---- a scratch folder per test run ---- */

/* Create /tmp/qd_<tag>_XXXXXX (mkdtemp) and remember it; returns it, or NULL (a failed
 * check) when it cannot be made. */
const char *scratch_make(const char *tag);
/* The folder scratch_make() made. */
const char *scratch_dir(void);
/* scratch_dir()/name in one of 8 rotating buffers (valid for the next 7 calls). */
const char *scratch_path(const char *name);
/* Remove the folder and everything in it (a failure is reported, not fatal). */
void scratch_remove(void);

/* ---- doctored model folders ---- */

/* Write text to path (truncating; errors ignored: the load that follows reports them). */
void write_text_file(const char *path, const char *text);
/* dir/config.json = the JSON file src with `key` set to the JSON `value` (added
 * when missing; NULL value: key removed). */
void write_config_with(const char *src, const char *dir, const char *key, const char *value);
/* dir/name -> symlink to src (a failure is recorded as a failed check). */
void link_fixture(const char *src, const char *dir, const char *name);
/* A component loader under test: loads the folder dir and frees what it loaded.
 * *out_cleared tells whether, on failure, the loader set its output pointer to NULL. */
typedef qd_status (*test_load_fn)(qd_ctx *ctx, const char *dir, int *out_cleared);
/* Loading dir must fail with `want`, clear the output, and name needle1 (and needle2). */
void expect_load_fail(qd_ctx *ctx, test_load_fn load, const char *dir, const char *what, qd_status want,
                      const char *needle1, const char *needle2);
/* For each case {key, JSON value, needle}: dir/config.json = base_config with key set
 * to value; loading must fail with `want`, naming config.json and the needle. */
void check_config_cases(qd_ctx *ctx, test_load_fn load, const char *base_config, const char *dir,
                        const char *const (*cases)[3], size_t n, qd_status want);

/* A whole file, NUL-terminated, malloc'd (length in *len if len); NULL when unreadable. */
char *test_read_file(const char *path, size_t *len);

/* ---- tokenizer cases ---- */

/* A JSON array of ids into out; the count, or -1 (not all numbers, more than cap). */
int json_ids(const cJSON *arr, int32_t *out, int cap);
/* Short one-line label for a prompt: at most ~40 bytes, whole UTF-8 characters,
 * control characters shown as spaces. Static buffer, rotating 4 slots. */
const char *text_label(const char *s);
/* Same id sequences. */
int ids_eq(const int32_t *a, int na, const int32_t *b, int nb);

#endif
