// Weighted Bradley-Terry-with-ties ratings over a few tiers from per-cell weights: the C++ twin of
// lmroute.kernels.reference.bt_ratings_from_cells (same algorithm step for step, see its docstring).
#pragma once

#include <cstdint>
#include <vector>

namespace lmroute {

// The design of a similarity-weighted BT fit: cell j compares tier a[j] with tier b[j]; y[j] is the
// target P(a wins) (1 = a won, 0 = b won, 0.5 = tie). Validated by the Python wrapper.
struct CellDesign {
    const int32_t* a;
    const int32_t* b;
    const double* y;
    int64_t n_cells;
    int32_t n_tiers;
};

// Ratings (natural log-odds units, sum 0 inside every connected group of tiers; 0 for tiers in no
// positively weighted cell) into ratings[n_tiers]. `weights` holds n_cells values >= 0.
void bt_ratings(const CellDesign& design, const double* weights, double* ratings);

// P(strong tier beats weak tier) = 1 / (1 + base^(r_weak - r_strong)) with r = R / ln(base).
double bt_win_probability(const CellDesign& design, const double* weights, int32_t strong, int32_t weak,
                          double base);

}  // namespace lmroute
