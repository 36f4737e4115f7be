/* A weight matrix as the GEMM sees it: `rows` output features by `cols` inputs
 * (a conv weight [O, I, kh, kw] is O x I*kh*kw). The storage stays as loaded
 * (memory-mapped fp32/fp16/bf16/fp8 today, quantized formats later) and
 * decode() produces float32 for any rectangle. */
#ifndef QD_TENSOR_WEIGHT_H
#define QD_TENSOR_WEIGHT_H

#include <stdint.h>
#include "base/ctx.h"
#include "io/safetensors.h"

struct qd_weight {
    int64_t rows, cols;
    const qd_st_tensor *t;     /* dense storage, row-major rows x cols */
    /* Write rows [r0, r0+nr) x cols [k0, k0+nk) to dst (row stride ld). */
    void (*decode)(const struct qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk,
                   float *dst, int64_t ld);
    const void *quant;         /* format-specific state for decode, if any */
    /* Optional: the format computes a whole linear itself (e.g. int8 quantized matmul),
     * y[M, rows] = x[M, cols] . W^T + bias, returning 1; or returns 0 to let qd_linear
     * run the GEMM over decode(). NULL: always the GEMM. */
    int (*linear)(qd_ctx *ctx, const struct qd_weight *w, const float *x, int64_t M, const float *bias, float *y);
    /* Optional: decode() for a bf16 GEMM, which rounds every value to bf16 anyway: the
     * format may compute low-order terms (e.g. SDNQ's low-rank SVD term) with bf16
     * products. NULL: the GEMM uses decode(). */
    void (*decode_lowp)(const struct qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk,
                        float *dst, int64_t ld);
    /* Optional, for formats stored input-major (sdnq's transposed int8 layout): the same
     * values k-major, panel[k*ld + r] = W[r0+r, k0+k] for r < nr (<= ld), lanes nr..ld-1 of
     * each k zero: the GEMM's B panel order, so no transpose. NULL: not available. */
    void (*decode_kmajor)(const struct qd_weight *w, int64_t r0, int nr, int64_t k0, int64_t nk, float *panel,
                          int64_t ld);
    /* Generation-time LoRA attached to this weight (tensor/lora_path.h), NULL: none. While
     * attached, decode() adds its low-rank delta and linear is NULL. */
    struct qd_lora_delta *lora;
    /* Optional: the weight is base + lr_up . lr_down, a low-rank term decode() adds (SDNQ's
     * SVD; not with a Hadamard rotation): decode_base() decodes the base alone; lr_up is
     * [rows, lr_rank], lr_down [lr_rank, cols] with row stride lr_ld, fp32. The GEMM may
     * then apply the term to the activations instead, (x . lr_down^T) . lr_up^T, where that
     * is cheaper than adding it to every decoded tile (tensor/gemm_lowrank.c). NULL: no
     * such term (and off while a LoRA is attached: decode_base would skip its delta). */
    void (*decode_base)(const struct qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, float *dst,
                        int64_t ld);
    const float *lr_up, *lr_down;
    int64_t lr_rank, lr_ld;
    /* A view (qd_weight_view): rows [0, view_n) are base rows view_r[0] + r, rows
     * [view_n, 2 view_n) (when view_r[1] >= 0) base rows view_r[1] + r - view_n; column k
     * is base column view_c + k. NULL: not a view. */
    const struct qd_weight *view_base;
    int64_t view_r[2], view_n, view_c;
    /* Optional, for the bf16 GEMM's packers (A strips as they are; B strips transpose
     * them): rows [r0, r0+nr) x cols [k0, k0+nk) of decode() (decode_bf16) or of
     * decode_base() (decode_base_bf16), times alpha, rounded to bf16 (round to nearest
     * even, as the packer rounds decode()'s floats) as pairs: row r at dst + r*ldw, word p
     * = columns k0+2p (low half) and k0+2p+1 (high half; 0 past nk). Returns 0 (nothing
     * written) when the format has no such path for this rectangle or CPU. They describe
     * the format's own decoders: ignored while a LoRA is attached (lora). NULL: none. */
    int (*decode_bf16)(const struct qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, uint32_t *dst,
                       int64_t ldw, float alpha);
    int (*decode_base_bf16)(const struct qd_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk, uint32_t *dst,
                            int64_t ldw, float alpha);
};
typedef struct qd_weight qd_weight;

/* A dense weight over a stored tensor whose numel is rows*cols. */
void qd_weight_dense(qd_weight *w, const qd_st_tensor *t, int64_t rows, int64_t cols);

/* w's storage when decode() is the plain dense one (rows x cols, row-major, values as
 * stored), else NULL: lets the GEMM packer read fp16/bf16 rows itself. */
const qd_st_tensor *qd_weight_dense_storage(const qd_weight *w);
/* v = the sub-matrix of base made of rows [ra, ra+n) followed by rows [rb, rb+n) (rb < 0:
 * only the first run), columns [c0, c0+nc): a GEMM over v decodes only those elements,
 * through base's decoders (so a LoRA delta attached to base is included; base's own
 * linear hook is not used: v->linear is NULL). Its low-rank term (decode_base) is base's
 * with the same rows and columns. Used to split one layer into several GEMMs
 * without decoding any element twice (the UNet feed-forward by hidden features). v
 * borrows base, which must outlive it. */
void qd_weight_view(qd_weight *v, const qd_weight *base, int64_t ra, int64_t rb, int64_t n, int64_t c0, int64_t nc);

#endif
