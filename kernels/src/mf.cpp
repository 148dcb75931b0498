#include "mf.hpp"

#include <cmath>

#include "sw_scan.hpp"  // threads_for

namespace lmroute {

void mf_dot(const float* embeddings, int64_t n_emb, int64_t d, const double* vectors, int64_t n_vec,
            double* out, int threads) {
    threads = threads_for(threads, n_emb * n_vec * d);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t b = 0; b < n_emb; ++b) {
        const float* e = embeddings + b * d;
        for (int64_t m = 0; m < n_vec; ++m) {
            const double* v = vectors + m * d;
            double s = 0.0;
#pragma omp simd reduction(+ : s)
            for (int64_t k = 0; k < d; ++k) s += static_cast<double>(e[k]) * v[k];
            out[b * n_vec + m] = s;
        }
    }
}

void mf_pair_probabilities(const float* embeddings, int64_t n_emb, int64_t d, const double* pair_vectors,
                           int64_t n_pairs, double* out, int threads) {
    mf_dot(embeddings, n_emb, d, pair_vectors, n_pairs, out, threads);
    for (int64_t i = 0; i < n_emb * n_pairs; ++i) {
        const double x = out[i];
        // stable sigmoid, as bundle.routers._sigmoid
        out[i] = x >= 0.0 ? 1.0 / (1.0 + std::exp(-x)) : std::exp(x) / (1.0 + std::exp(x));
    }
}

}  // namespace lmroute
