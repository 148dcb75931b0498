// Per-row dot products whose result for a row does not depend on the other rows of the call: the linear
// part of the heads of bundle kinds adapted, quality and adapted_quality. BLAS picks its kernels and
// blocking by the batch's size, so a prompt scored alone and in a batch could differ in the last bits.
#pragma once

#include <cstdint>

namespace lmroute {

// out[i, j] = x_i . w_j for x [n, d] and w [m, d] (float64), each sum in one fixed order.
void row_dots(const double* x, int64_t n, int64_t d, const double* w, int64_t m, double* out);

}  // namespace lmroute
