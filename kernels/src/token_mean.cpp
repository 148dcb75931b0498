#include "token_mean.hpp"

#include <cmath>

namespace lmroute {

int64_t token_mean(const float* table, int64_t vocab, int64_t d, const int64_t* ids, const int64_t* offsets,
                   int64_t n, float* out) {
    for (int64_t k = 0; k < offsets[n]; ++k) {
        if (ids[k] < 0 || ids[k] >= vocab) return k;
    }
    for (int64_t r = 0; r < n; ++r) {
        float* o = out + r * d;
        for (int64_t j = 0; j < d; ++j) o[j] = 0.0f;
        for (int64_t k = offsets[r]; k < offsets[r + 1]; ++k) {
            const float* row = table + ids[k] * d;
#pragma omp simd
            for (int64_t j = 0; j < d; ++j) o[j] += row[j];
        }
        double sq = 0.0;
        for (int64_t j = 0; j < d; ++j) sq += static_cast<double>(o[j]) * o[j];
        const float inv = static_cast<float>(1.0 / std::sqrt(sq));
        for (int64_t j = 0; j < d; ++j) o[j] *= inv;
    }
    return -1;
}

}  // namespace lmroute
