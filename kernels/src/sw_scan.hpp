// Similarity-weighted cell sums for a batch of queries: the C++ twin of
// lmroute.kernels.reference.sw_cell_weights, with the per-prompt cell counts in CSR form.
#pragma once

#include <cstdint>

namespace lmroute {

// Training prompts: n L2-normalised float32 embeddings of dim d, and their cell counts as CSR
// (row i holds counts[indptr[i]:indptr[i+1]] in cells indices[...]).
struct PromptTable {
    const float* embeddings;  // [n, d]
    int64_t n;
    int64_t d;
    const int64_t* indptr;    // [n + 1]
    const int32_t* indices;   // [nnz], each in 0..n_cells-1
    const double* counts;     // [nnz]
    int64_t n_cells;
};

// OpenMP threads worth using for `work` multiply-adds: 1 below ~4M (a fork/join costs more than it saves
// there, and on a busy machine a descheduled second thread stalls the whole call).
int threads_for(int threads, int64_t work);

// Exact similarities sims[g, i] = q_g . x_i accumulated in double (products of float32 are exact in
// double), for g < n_queries. `queries` is [n_queries, d] in double; sims is [n_queries, n].
void exact_similarities(const PromptTable& table, const double* queries, int64_t n_queries, double* sims,
                        int threads);

// Cell weights c_g = sum_i gamma^(1 + sims[g, i] / max_j sims[g, j]) * counts_i (all weights gamma when
// max_j sims[g, j] <= 0). sims is [n_queries, n] (float or double); cell_weights is [n_queries, n_cells].
template <typename Sim>
void cell_weights_from_similarities(const PromptTable& table, const Sim* sims, int64_t n_queries,
                                    double gamma, double* cell_weights, int threads);

}  // namespace lmroute
