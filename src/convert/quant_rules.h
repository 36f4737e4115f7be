/* sdnq's quantize-time rules that are not part of the stored format: the default
 * skip lists per model class (spec sdnq.md §1.3) and the order in which dynamic
 * quantization tries weight types (§2 step 11). */
#ifndef QD_CONVERT_QUANT_RULES_H
#define QD_CONVERT_QUANT_RULES_H

/* The default skip entries for a component class (diffusers _class_name or the
 * transformers architecture): NULL-terminated, static. */
const char *const *qd_quant_default_skips(const char *class_name);

/* Candidate types for dynamic quantization starting at `start` (canonical name):
 * by bits, each width as intN, floatN_*fn, uintN, floatN_*fnu; only unsigned ints
 * when codebook. A start type outside that order (native floats) is tried first,
 * then the wider types. Fills names[0..n), returns n. */
#define QD_QUANT_MAX_ORDER 400
int qd_quant_dynamic_order(const char *start, int codebook, char (*names)[40], int cap);

#endif
