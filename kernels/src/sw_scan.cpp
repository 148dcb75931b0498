// The hot loops of sw_ranking: an exact similarity scan (float32 data, double accumulation, register
// blocked over rows and queries) and the weight + scatter-add
// pass into per-(tier_a, tier_b, outcome) cells. Both are parallel over rows (OpenMP); the per-thread
// cell sums are added in thread order, so a fixed thread count gives bit-identical results.
#include "sw_scan.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "fast_exp.hpp"

// One build runs everywhere: the hot loops are compiled for AVX-512, AVX2+FMA and baseline x86-64,
// and the loader picks the best the CPU has.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LMROUTE_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LMROUTE_CLONES
#endif

namespace lmroute {
namespace {

constexpr int64_t kRowTile = 256;
constexpr int64_t kMinWorkPerExtraThread = int64_t{1} << 22;

// sims[g, i] for rows r0..r1 and all queries. Register blocking: 2 rows x 4 queries per pass (8
// independent FMA chains, 6 loads per 8 FMAs); leftover queries go 4 rows at a time.
LMROUTE_CLONES
void dot_rows(const float* x_rows, int64_t r0, int64_t r1, int64_t d, const double* queries,
              int64_t n_queries, double* sims, int64_t n) {
    int64_t g = 0;
    for (; g + 4 <= n_queries; g += 4) {
        const double* q0 = queries + g * d;
        const double* q1 = q0 + d;
        const double* q2 = q1 + d;
        const double* q3 = q2 + d;
        int64_t i = r0;
        for (; i + 2 <= r1; i += 2) {
            const float* xa = x_rows + i * d;
            const float* xb = xa + d;
            double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0, b0 = 0.0, b1 = 0.0, b2 = 0.0, b3 = 0.0;
#pragma omp simd reduction(+ : a0, a1, a2, a3, b0, b1, b2, b3)
            for (int64_t k = 0; k < d; ++k) {
                const double xak = xa[k], xbk = xb[k];
                a0 += xak * q0[k];
                a1 += xak * q1[k];
                a2 += xak * q2[k];
                a3 += xak * q3[k];
                b0 += xbk * q0[k];
                b1 += xbk * q1[k];
                b2 += xbk * q2[k];
                b3 += xbk * q3[k];
            }
            sims[g * n + i] = a0;
            sims[(g + 1) * n + i] = a1;
            sims[(g + 2) * n + i] = a2;
            sims[(g + 3) * n + i] = a3;
            sims[g * n + i + 1] = b0;
            sims[(g + 1) * n + i + 1] = b1;
            sims[(g + 2) * n + i + 1] = b2;
            sims[(g + 3) * n + i + 1] = b3;
        }
        for (; i < r1; ++i) {
            const float* x = x_rows + i * d;
            double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
            for (int64_t k = 0; k < d; ++k) {
                const double xk = x[k];
                s0 += xk * q0[k];
                s1 += xk * q1[k];
                s2 += xk * q2[k];
                s3 += xk * q3[k];
            }
            sims[g * n + i] = s0;
            sims[(g + 1) * n + i] = s1;
            sims[(g + 2) * n + i] = s2;
            sims[(g + 3) * n + i] = s3;
        }
    }
    for (; g < n_queries; ++g) {
        const double* q = queries + g * d;
        int64_t i = r0;
        for (; i + 4 <= r1; i += 4) {
            const float* x0 = x_rows + i * d;
            const float* x1 = x0 + d;
            const float* x2 = x1 + d;
            const float* x3 = x2 + d;
            double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
            for (int64_t k = 0; k < d; ++k) {
                const double qk = q[k];
                s0 += static_cast<double>(x0[k]) * qk;
                s1 += static_cast<double>(x1[k]) * qk;
                s2 += static_cast<double>(x2[k]) * qk;
                s3 += static_cast<double>(x3[k]) * qk;
            }
            sims[g * n + i] = s0;
            sims[g * n + i + 1] = s1;
            sims[g * n + i + 2] = s2;
            sims[g * n + i + 3] = s3;
        }
        for (; i < r1; ++i) {
            const float* x = x_rows + i * d;
            double s = 0.0;
#pragma omp simd reduction(+ : s)
            for (int64_t k = 0; k < d; ++k) s += static_cast<double>(x[k]) * q[k];
            sims[g * n + i] = s;
        }
    }
}

LMROUTE_CLONES
void exp_weights(const double* sims, int64_t len, double log_gamma, double inv_max, double* out) {
    // out[i] = gamma^(1 + sims[i] / max_sim)
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) out[i] = fast_exp(log_gamma * (1.0 + sims[i] * inv_max));
}

}  // namespace

int threads_for(int threads, int64_t work) {
    const int64_t useful = std::max<int64_t>(1, work / kMinWorkPerExtraThread);
    return static_cast<int>(std::clamp<int64_t>(useful, 1, std::max(1, threads)));
}

void exact_similarities(const PromptTable& table, const double* queries, int64_t n_queries, double* sims,
                        int threads) {
    threads = threads_for(threads, table.n * n_queries * table.d);
    const int64_t n_tiles = (table.n + kRowTile - 1) / kRowTile;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t t = 0; t < n_tiles; ++t) {
        const int64_t r0 = t * kRowTile;
        const int64_t r1 = std::min(table.n, r0 + kRowTile);
        dot_rows(table.embeddings, r0, r1, table.d, queries, n_queries, sims, table.n);
    }
}

template <typename Sim>
void cell_weights_from_similarities(const PromptTable& table, const Sim* sims, int64_t n_queries,
                                    double gamma, double* cell_weights, int threads) {
    const int64_t n = table.n, c = table.n_cells;
    std::fill(cell_weights, cell_weights + n_queries * c, 0.0);
    if (n == 0 || n_queries == 0) return;
    const double log_gamma = std::log(gamma);
    // The reference's ratio sim / max_sim (0 when max_sim <= 0), as a multiplier.
    std::vector<double> inv_max(n_queries);
    for (int64_t g = 0; g < n_queries; ++g) {
        const Sim* row = sims + g * n;
        double m = static_cast<double>(row[0]);
        for (int64_t i = 1; i < n; ++i) m = std::max(m, static_cast<double>(row[i]));
        inv_max[g] = m > 0.0 ? 1.0 / m : 0.0;
    }
    const int n_threads = threads_for(threads, table.n * n_queries * 16);  // ~16 flops per row and query
    std::vector<double> partial(static_cast<size_t>(n_threads) * n_queries * c, 0.0);
    const int64_t n_tiles = (n + kRowTile - 1) / kRowTile;
#pragma omp parallel num_threads(n_threads) if (n_threads > 1)
    {
        const int tid = omp_get_thread_num();
        double* acc = partial.data() + static_cast<size_t>(tid) * n_queries * c;
        std::vector<double> sim_d(kRowTile), w(kRowTile);
#pragma omp for schedule(static)
        for (int64_t t = 0; t < n_tiles; ++t) {
            const int64_t r0 = t * kRowTile;
            const int64_t len = std::min(n, r0 + kRowTile) - r0;
            for (int64_t g = 0; g < n_queries; ++g) {
                const Sim* row = sims + g * n + r0;
                for (int64_t i = 0; i < len; ++i) sim_d[i] = static_cast<double>(row[i]);
                if (inv_max[g] > 0.0) {
                    exp_weights(sim_d.data(), len, log_gamma, inv_max[g], w.data());
                } else {
                    std::fill(w.begin(), w.begin() + len, gamma);
                }
                double* acc_g = acc + g * c;
                for (int64_t i = 0; i < len; ++i) {
                    const int64_t row_i = r0 + i;
                    for (int64_t j = table.indptr[row_i]; j < table.indptr[row_i + 1]; ++j)
                        acc_g[table.indices[j]] += w[i] * table.counts[j];
                }
            }
        }
    }
    for (int tid = 0; tid < n_threads; ++tid) {
        const double* acc = partial.data() + static_cast<size_t>(tid) * n_queries * c;
        for (int64_t k = 0; k < n_queries * c; ++k) cell_weights[k] += acc[k];
    }
}

template void cell_weights_from_similarities<float>(const PromptTable&, const float*, int64_t, double,
                                                    double*, int);
template void cell_weights_from_similarities<double>(const PromptTable&, const double*, int64_t, double,
                                                     double*, int);

}  // namespace lmroute
