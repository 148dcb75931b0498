#include "rowwise.hpp"

namespace lmroute {

namespace {
// x . y in float64 with eight running sums combined in a fixed order: independent chains the compiler can
// vectorise without reordering a sum, and the same result whatever the caller batches.
double dot8(const double* x, const double* y, int64_t d) {
    double s[8] = {};
    int64_t k = 0;
    for (; k + 8 <= d; k += 8) {
        for (int l = 0; l < 8; ++l) s[l] += x[k + l] * y[k + l];
    }
    double t = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; k < d; ++k) t += x[k] * y[k];
    return t;
}
}  // namespace

void row_dots(const double* x, int64_t n, int64_t d, const double* w, int64_t m, double* out) {
    for (int64_t i = 0; i < n; ++i) {
        const double* xi = x + i * d;
        for (int64_t j = 0; j < m; ++j) {
            out[i * m + j] = dot8(xi, w + j * d, d);
        }
    }
}

}  // namespace lmroute
