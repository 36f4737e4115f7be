/* SDNQ stored weight types (spec sdnq.md §1.5-1.7): parsing a weights_dtype name,
 * what its codes look like on disk, and unpacking any element range of a code
 * stream to numbers without touching the rest of the tensor. */
#ifndef QD_QUANT_SDNQ_UNPACK_H
#define QD_QUANT_SDNQ_UNPACK_H

#include <stdint.h>
#include "io/safetensors.h"

typedef enum {
    QD_SQ_INT,      /* signed integers: native two's complement, or packed offset-binary */
    QD_SQ_UINT,     /* unsigned integers */
    QD_SQ_FLOAT,    /* torch float types stored as themselves (F32/BF16/F16/F8) */
    QD_SQ_CFLOAT    /* sdnq's custom floatN_eXmY{fn,fnu} codes (§1.7) */
} qd_sdnq_family;

typedef struct {
    char name[40];          /* canonical spelling, e.g. "uint4", "float6_e3m2fn" */
    qd_sdnq_family family;
    int bits;               /* N: bits per code */
    int is_signed;
    int exp_bits, man_bits; /* float families */
    int packed;             /* codes bit-packed into a flat word stream (§1.6) */
    int custom;             /* sdnq-defined code (packed int or custom float), not a torch dtype */
    int block_codes;        /* packed: K codes ... */
    int block_words;        /* ... are stored in P words ... */
    int word_bytes;         /* ... of 1 or 2 bytes */
    qd_dtype storage;       /* on-disk element type (packed words: U8/I16/BOOL) */
    double max;             /* largest value a code represents */
} qd_sdnq_dtype;

/* Parse a weights_dtype / quantized_matmul_dtype string, aliases included.
 * Returns 0 on success, -1 for an unknown name, -2 for a name sdnq knows that
 * this build does not decode (float8_e8m0fnu and the fnuz fp8 variants). */
int qd_sdnq_dtype_parse(const char *name, qd_sdnq_dtype *out);

/* Storage elements (words for packed types) holding n codes; -1 if n is not a
 * whole number of packing blocks (upstream never pads). */
int64_t qd_sdnq_storage_elems(const qd_sdnq_dtype *dt, int64_t n);

/* Element values q of codes [start, start+count) in the flat stream `data`
 * (§1.8 step 1: signed ints re-centred, floats decoded, -0 as +0). The caller
 * guarantees the range lies inside the (checked) tensor. */
void qd_sdnq_unpack_f32(const qd_sdnq_dtype *dt, const void *data, int64_t start, int64_t count, float *dst);

/* Integer codes as values, for integer families of at most 16 bits. */
void qd_sdnq_unpack_int(const qd_sdnq_dtype *dt, const void *data, int64_t start, int64_t count, int32_t *dst);

/* Value of one custom-float code (§1.7). */
float qd_sdnq_cfloat_value(const qd_sdnq_dtype *dt, uint32_t code);

#endif
