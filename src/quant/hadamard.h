/* The Hadamard rotation SDNQ applies along a weight's input dimension (spec
 * sdnq.md §1.8 step 6): H is a Kronecker power of the 4x4 matrix
 * [[1,1,1,-1],[1,1,-1,1],[1,-1,1,1],[-1,1,1,1]]/2 when the block size is a power
 * of 4, else of [[1,1],[1,-1]] (scaled by 1/sqrt(g)). Symmetric and orthogonal,
 * so x.H undoes a rotation and rotates activations alike. */
#ifndef QD_QUANT_HADAMARD_H
#define QD_QUANT_HADAMARD_H

#include <stdint.h>

/* x[0..g) <- x . H_g in place (g a power of 2, >= 2), as a fast butterfly. */
void qd_hadamard(float *x, int64_t g);

#endif
