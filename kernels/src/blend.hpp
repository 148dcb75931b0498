// A router's scores blended with the difficulty prior (C++ twin of reference.blend_scores).
#pragma once

#include <cstdint>

namespace lmroute {

// The prior's and the blend's fixed numbers (docs/BUNDLE.md "difficulty_prior" and "blend").
struct BlendParams {
    double prior_bias, prior_center, prior_scale;  // difficulty = -(e . w + prior_bias), standardised
    double weight, center, scale;                  // z = (logit(p) - center) / scale + weight * difficulty_z
};

// out[b] = sigmoid((logit(clip(p_b)) - center) / scale + weight * (-(e_b . w + bias) - prior_center) / prior_scale)
// for router scores p [n], embeddings e [n, d] (float32) and prior weights w [d]; p is clipped to
// [logit_eps, 1 - logit_eps]. Dot products accumulate in double.
void blend_scores(const double* scores, const float* embeddings, int64_t n, int64_t d, const double* prior_weights,
                  const BlendParams& params, double logit_eps, double* out);

}  // namespace lmroute
