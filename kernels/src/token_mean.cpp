#include "token_mean.hpp"

#include <cmath>
#include <vector>

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

int64_t cut_token_mean(const float* table, int64_t vocab, int64_t d, const int64_t* ids, const int64_t* lengths,
                       int64_t n, int64_t max_tokens, int64_t head_end, float* out, int64_t* n_tokens,
                       bool* truncated) {
    std::vector<int64_t> kept, offsets(static_cast<size_t>(n) + 1, 0);
    int64_t start = 0;
    for (int64_t r = 0; r < n; ++r) {
        const int64_t len = lengths[r];
        const int64_t* row = ids + start;
        for (int64_t k = 0; k < len; ++k) {
            if (row[k] < 0 || row[k] >= vocab) return start + k;
        }
        truncated[r] = len > max_tokens;
        if (truncated[r]) {
            kept.insert(kept.end(), row, row + head_end);
            kept.insert(kept.end(), row + len - (max_tokens - head_end), row + len);
        } else {
            kept.insert(kept.end(), row, row + len);
        }
        n_tokens[r] = truncated[r] ? max_tokens : len;
        offsets[static_cast<size_t>(r) + 1] = static_cast<int64_t>(kept.size());
        start += len;
    }
    return token_mean(table, vocab, d, kept.data(), offsets.data(), n, out);
}

}  // namespace lmroute
