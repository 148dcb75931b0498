// Matrix-factorisation router math on a batch of embeddings (C++ twin of reference.mf_logits).
#pragma once

#include <cstdint>

namespace lmroute {

// out[b, m] = e_b . v_m for embeddings [n_emb, d] (float32) and model vectors [n_vec, d] (double,
// v_m = W^T (w * P_m / ||P_m||), folded once by the Python wrapper). Accumulates in double.
void mf_dot(const float* embeddings, int64_t n_emb, int64_t d, const double* vectors, int64_t n_vec,
            double* out, int threads);

// out[b, p] = sigmoid(e_b . u_p) for pair vectors u_p = v_strong - v_weak [n_pairs, d].
void mf_pair_probabilities(const float* embeddings, int64_t n_emb, int64_t d, const double* pair_vectors,
                           int64_t n_pairs, double* out, int threads);

}  // namespace lmroute
