#pragma once
#include <cstdint>

namespace lmroute {

// The static encoder's embedding of each row: the L2-normalised sum of the table rows of its token ids.
// table [vocab, d] float32; ids [offsets[n]] (row r holds ids[offsets[r] .. offsets[r+1])); out [n, d].
// Each row's sum runs over its own ids in order, in float32, so it does not depend on the other rows of
// the call; its norm is accumulated in float64. Returns the index of the first id outside [0, vocab), or
// -1 when every id is valid (then out is written).
int64_t token_mean(const float* table, int64_t vocab, int64_t d, const int64_t* ids, const int64_t* offsets,
                   int64_t n, float* out);

}  // namespace lmroute
