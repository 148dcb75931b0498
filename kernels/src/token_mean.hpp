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

// token_mean of rows given whole (template tokens included: row r is the lengths[r] ids after row r-1's),
// each row longer than max_tokens cut first as lmroute.bundle.truncation.cut_positions cuts it: its
// first head_end ids and its last max_tokens - head_end (0 <= head_end <= max_tokens). Writes out
// [n, d], n_tokens[r] = the ids kept and truncated[r] = whether row r was cut; the sums are
// token_mean's, so a row embeds exactly as its cut and padded batch does. Returns as token_mean.
int64_t cut_token_mean(const float* table, int64_t vocab, int64_t d, const int64_t* ids, const int64_t* lengths,
                       int64_t n, int64_t max_tokens, int64_t head_end, float* out, int64_t* n_tokens,
                       bool* truncated);

}  // namespace lmroute
