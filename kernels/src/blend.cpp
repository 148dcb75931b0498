#include "blend.hpp"

#include <algorithm>
#include <cmath>

namespace lmroute {

void blend_scores(const double* scores, const float* embeddings, int64_t n, int64_t d, const double* prior_weights,
                  const BlendParams& params, double logit_eps, double* out) {
    for (int64_t b = 0; b < n; ++b) {
        const float* e = embeddings + b * d;
        double dot = 0.0;
#pragma omp simd reduction(+ : dot)
        for (int64_t k = 0; k < d; ++k) dot += static_cast<double>(e[k]) * prior_weights[k];
        const double difficulty = -(dot + params.prior_bias);
        const double p = std::clamp(scores[b], logit_eps, 1.0 - logit_eps);
        const double logit = std::log(p) - std::log1p(-p);
        const double z = (logit - params.center) / params.scale +
                         params.weight * (difficulty - params.prior_center) / params.prior_scale;
        const double ez = std::exp(-std::fabs(z));  // sigmoid with full relative precision on both tails
        out[b] = z >= 0.0 ? 1.0 / (1.0 + ez) : ez / (1.0 + ez);
    }
}

}  // namespace lmroute
