// Python bindings (nanobind) of the compiled scoring core: lmroute.kernels._core.
//
// Private module: lmroute.kernels.compiled is its only caller and validates every array (dtype,
// shape, index ranges) before it gets here; these functions re-check only the shapes they index with.
// Every function releases the GIL and writes into an output array the caller allocated.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>
#include <omp.h>

#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "blend.hpp"
#include "token_mean.hpp"
#include "bt_solve.hpp"
#include "fast_exp.hpp"
#include "mf.hpp"
#include "rowwise.hpp"
#include "sw_scan.hpp"
#include "wordpiece.hpp"

namespace nb = nanobind;
using namespace nb::literals;

#ifndef LMROUTE_SOURCE_SHA256
#error "LMROUTE_SOURCE_SHA256 must be defined by the build (CMakeLists.txt)"
#endif

namespace {

constexpr int kAbiVersion = 8;
constexpr int64_t kSimBufferBytes = 128LL << 20;  // similarity scratch per group of queries

template <typename T, typename... Extra>
using In = nb::ndarray<const T, nb::c_contig, nb::device::cpu, Extra...>;
template <typename T, typename... Extra>
using Out = nb::ndarray<T, nb::c_contig, nb::device::cpu, Extra...>;

void require(bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument(what);
}

struct Design {
    lmroute::CellDesign cells;
    lmroute::PromptTable table;
};

Design make_design(const In<int64_t, nb::ndim<1>>& indptr, const In<int32_t, nb::ndim<1>>& indices,
                   const In<double, nb::ndim<1>>& counts, const In<int32_t, nb::ndim<1>>& cell_a,
                   const In<int32_t, nb::ndim<1>>& cell_b, const In<double, nb::ndim<1>>& cell_y,
                   int32_t n_tiers, int64_t n_prompts) {
    require(indptr.shape(0) == static_cast<size_t>(n_prompts) + 1, "indptr must have n_prompts + 1 entries");
    require(indices.shape(0) == counts.shape(0), "indices and counts differ in length");
    require(cell_a.shape(0) == cell_b.shape(0) && cell_a.shape(0) == cell_y.shape(0),
            "cell_a, cell_b and cell_y differ in length");
    require(n_tiers >= 1, "n_tiers must be >= 1");
    Design d{};
    d.cells = {cell_a.data(), cell_b.data(), cell_y.data(), static_cast<int64_t>(cell_a.shape(0)), n_tiers};
    d.table = {nullptr, n_prompts, 0, indptr.data(), indices.data(), counts.data(),
               static_cast<int64_t>(cell_a.shape(0))};
    return d;
}

void solve_all(const lmroute::CellDesign& cells, const double* cell_weights, int64_t n_queries, int32_t strong,
               int32_t weak, double base, double* out, int threads) {
    threads = lmroute::threads_for(threads, n_queries * cells.n_cells * 400);  // ~10-30 Newton steps per query
#pragma omp parallel for schedule(dynamic) num_threads(threads) if (threads > 1 && n_queries > 1)
    for (int64_t g = 0; g < n_queries; ++g)
        out[g] = lmroute::bt_win_probability(cells, cell_weights + g * cells.n_cells, strong, weak, base);
}

void check_tiers(int32_t strong, int32_t weak, int32_t n_tiers) {
    require(strong >= 0 && strong < n_tiers && weak >= 0 && weak < n_tiers, "tier index out of range");
}

// Exact scan + weights + Newton, in groups of queries whose similarity rows fit kSimBufferBytes.
void sw_scores(In<float, nb::ndim<2>> embeddings, In<int64_t, nb::ndim<1>> indptr, In<int32_t, nb::ndim<1>> indices,
               In<double, nb::ndim<1>> counts, In<int32_t, nb::ndim<1>> cell_a, In<int32_t, nb::ndim<1>> cell_b,
               In<double, nb::ndim<1>> cell_y, int32_t n_tiers, In<float, nb::ndim<2>> queries, int32_t strong,
               int32_t weak, double gamma, double base, int threads, Out<double, nb::ndim<1>> out) {
    const int64_t n = embeddings.shape(0), d = embeddings.shape(1), b = queries.shape(0);
    require(queries.shape(1) == static_cast<size_t>(d), "queries and embeddings differ in dim");
    require(out.shape(0) == static_cast<size_t>(b), "out must have one entry per query");
    check_tiers(strong, weak, n_tiers);
    Design design = make_design(indptr, indices, counts, cell_a, cell_b, cell_y, n_tiers, n);
    design.table.embeddings = embeddings.data();
    design.table.d = d;
    const int64_t c = design.cells.n_cells;
    nb::gil_scoped_release release;
    const int64_t group = std::clamp<int64_t>(kSimBufferBytes / std::max<int64_t>(1, n * 8), 1, std::max<int64_t>(b, 1));
    std::vector<double> q(static_cast<size_t>(group) * d), sims(static_cast<size_t>(group) * n),
        weights(static_cast<size_t>(group) * c);
    for (int64_t g0 = 0; g0 < b; g0 += group) {
        const int64_t g = std::min(group, b - g0);
        for (int64_t i = 0; i < g * d; ++i) q[i] = queries.data()[g0 * d + i];
        lmroute::exact_similarities(design.table, q.data(), g, sims.data(), threads);
        lmroute::cell_weights_from_similarities(design.table, sims.data(), g, gamma, weights.data(), threads);
        solve_all(design.cells, weights.data(), g, strong, weak, base, out.data() + g0, threads);
    }
}

template <typename Sim>
void sw_scores_from_sims(In<Sim, nb::ndim<2>> sims, In<int64_t, nb::ndim<1>> indptr, In<int32_t, nb::ndim<1>> indices,
                         In<double, nb::ndim<1>> counts, In<int32_t, nb::ndim<1>> cell_a,
                         In<int32_t, nb::ndim<1>> cell_b, In<double, nb::ndim<1>> cell_y, int32_t n_tiers,
                         int32_t strong, int32_t weak, double gamma, double base, int threads,
                         Out<double, nb::ndim<1>> out) {
    const int64_t b = sims.shape(0), n = sims.shape(1);
    require(out.shape(0) == static_cast<size_t>(b), "out must have one entry per query");
    check_tiers(strong, weak, n_tiers);
    Design design = make_design(indptr, indices, counts, cell_a, cell_b, cell_y, n_tiers, n);
    const int64_t c = design.cells.n_cells;
    nb::gil_scoped_release release;
    std::vector<double> weights(static_cast<size_t>(b) * c);
    lmroute::cell_weights_from_similarities(design.table, sims.data(), b, gamma, weights.data(), threads);
    solve_all(design.cells, weights.data(), b, strong, weak, base, out.data(), threads);
}

void sw_scores_from_cell_weights(In<double, nb::ndim<2>> cell_weights, In<int32_t, nb::ndim<1>> cell_a,
                                 In<int32_t, nb::ndim<1>> cell_b, In<double, nb::ndim<1>> cell_y, int32_t n_tiers,
                                 int32_t strong, int32_t weak, double base, int threads,
                                 Out<double, nb::ndim<1>> out) {
    const int64_t b = cell_weights.shape(0);
    require(cell_a.shape(0) == cell_b.shape(0) && cell_a.shape(0) == cell_y.shape(0) &&
                cell_weights.shape(1) == cell_a.shape(0),
            "cell_weights must be [b, n_cells] and cell_a, cell_b, cell_y n_cells long");
    require(out.shape(0) == static_cast<size_t>(b), "out must have one entry per query");
    require(n_tiers >= 1, "n_tiers must be >= 1");
    check_tiers(strong, weak, n_tiers);
    lmroute::CellDesign cells{cell_a.data(), cell_b.data(), cell_y.data(), static_cast<int64_t>(cell_a.shape(0)),
                              n_tiers};
    nb::gil_scoped_release release;
    solve_all(cells, cell_weights.data(), b, strong, weak, base, out.data(), threads);
}

void sw_cell_weights(In<float, nb::ndim<2>> embeddings, In<int64_t, nb::ndim<1>> indptr,
                     In<int32_t, nb::ndim<1>> indices, In<double, nb::ndim<1>> counts, int64_t n_cells,
                     In<float, nb::ndim<2>> queries, double gamma, int threads, Out<double, nb::ndim<2>> out) {
    const int64_t n = embeddings.shape(0), d = embeddings.shape(1), b = queries.shape(0);
    require(queries.shape(1) == static_cast<size_t>(d), "queries and embeddings differ in dim");
    require(out.shape(0) == static_cast<size_t>(b) && out.shape(1) == static_cast<size_t>(n_cells),
            "out must be [n_queries, n_cells]");
    require(indptr.shape(0) == static_cast<size_t>(n) + 1, "indptr must have n_prompts + 1 entries");
    lmroute::PromptTable table{embeddings.data(), n, d, indptr.data(), indices.data(), counts.data(), n_cells};
    nb::gil_scoped_release release;
    std::vector<double> q(static_cast<size_t>(b) * d), sims(static_cast<size_t>(b) * n);
    for (int64_t i = 0; i < b * d; ++i) q[i] = queries.data()[i];
    lmroute::exact_similarities(table, q.data(), b, sims.data(), threads);
    lmroute::cell_weights_from_similarities(table, sims.data(), b, gamma, out.data(), threads);
}

void bt_ratings(In<int32_t, nb::ndim<1>> cell_a, In<int32_t, nb::ndim<1>> cell_b, In<double, nb::ndim<1>> cell_y,
                int32_t n_tiers, In<double, nb::ndim<1>> weights, Out<double, nb::ndim<1>> out) {
    require(cell_a.shape(0) == cell_b.shape(0) && cell_a.shape(0) == cell_y.shape(0) &&
                cell_a.shape(0) == weights.shape(0),
            "cell_a, cell_b, cell_y and weights differ in length");
    require(n_tiers >= 1 && out.shape(0) == static_cast<size_t>(n_tiers), "out must have n_tiers entries");
    lmroute::CellDesign cells{cell_a.data(), cell_b.data(), cell_y.data(), static_cast<int64_t>(cell_a.shape(0)),
                              n_tiers};
    nb::gil_scoped_release release;
    lmroute::bt_ratings(cells, weights.data(), out.data());
}

void mf_dot(In<float, nb::ndim<2>> embeddings, In<double, nb::ndim<2>> vectors, int threads,
            Out<double, nb::ndim<2>> out) {
    const int64_t b = embeddings.shape(0), d = embeddings.shape(1), m = vectors.shape(0);
    require(vectors.shape(1) == static_cast<size_t>(d), "vectors and embeddings differ in dim");
    require(out.shape(0) == static_cast<size_t>(b) && out.shape(1) == static_cast<size_t>(m), "out must be [b, m]");
    nb::gil_scoped_release release;
    lmroute::mf_dot(embeddings.data(), b, d, vectors.data(), m, out.data(), threads);
}

void mf_pair_probabilities(In<float, nb::ndim<2>> embeddings, In<double, nb::ndim<2>> pair_vectors, int threads,
                           Out<double, nb::ndim<2>> out) {
    const int64_t b = embeddings.shape(0), d = embeddings.shape(1), p = pair_vectors.shape(0);
    require(pair_vectors.shape(1) == static_cast<size_t>(d), "pair_vectors and embeddings differ in dim");
    require(out.shape(0) == static_cast<size_t>(b) && out.shape(1) == static_cast<size_t>(p), "out must be [b, p]");
    nb::gil_scoped_release release;
    lmroute::mf_pair_probabilities(embeddings.data(), b, d, pair_vectors.data(), p, out.data(), threads);
}

void blend_scores(In<double, nb::ndim<1>> scores, In<float, nb::ndim<2>> embeddings,
                  In<double, nb::ndim<1>> prior_weights, double prior_bias, double prior_center, double prior_scale,
                  double weight, double center, double scale, double logit_eps, Out<double, nb::ndim<1>> out) {
    const int64_t n = embeddings.shape(0), d = embeddings.shape(1);
    require(scores.shape(0) == static_cast<size_t>(n) && out.shape(0) == static_cast<size_t>(n),
            "scores, embeddings and out differ in rows");
    require(prior_weights.shape(0) == static_cast<size_t>(d), "prior_weights and embeddings differ in dim");
    const lmroute::BlendParams params{prior_bias, prior_center, prior_scale, weight, center, scale};
    nb::gil_scoped_release release;
    lmroute::blend_scores(scores.data(), embeddings.data(), n, d, prior_weights.data(), params, logit_eps, out.data());
}

int64_t token_mean(In<float, nb::ndim<2>> table, In<int64_t, nb::ndim<1>> ids, In<int64_t, nb::ndim<1>> offsets,
                   Out<float, nb::ndim<2>> out) {
    const int64_t n = static_cast<int64_t>(offsets.shape(0)) - 1, d = table.shape(1);
    require(n >= 0, "offsets must hold at least one entry");
    require(out.shape(0) == static_cast<size_t>(n) && out.shape(1) == static_cast<size_t>(d), "out must be [n, d]");
    const int64_t* off = offsets.data();
    require(off[0] == 0 && off[n] == static_cast<int64_t>(ids.shape(0)), "offsets must run from 0 to len(ids)");
    for (int64_t r = 0; r < n; ++r) require(off[r] < off[r + 1], "every row needs at least one id");
    nb::gil_scoped_release release;
    return lmroute::token_mean(table.data(), table.shape(0), d, ids.data(), off, n, out.data());
}

void row_dots(In<double, nb::ndim<2>> x, In<double, nb::ndim<2>> w, Out<double, nb::ndim<2>> out) {
    const int64_t n = x.shape(0), d = x.shape(1), m = w.shape(0);
    require(w.shape(1) == static_cast<size_t>(d), "x and w differ in dim");
    require(out.shape(0) == static_cast<size_t>(n) && out.shape(1) == static_cast<size_t>(m), "out must be [n, m]");
    nb::gil_scoped_release release;
    lmroute::row_dots(x.data(), n, d, w.data(), m, out.data());
}

void fast_exp(In<double, nb::ndim<1>> x, Out<double, nb::ndim<1>> out) {
    require(x.shape(0) == out.shape(0), "x and out differ in length");
    const double* src = x.data();
    double* dst = out.data();
    const int64_t n = x.shape(0);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) dst[i] = lmroute::fast_exp(src[i]);
}

// The str texts of a list, read in place in Python's layout (all of them when the tokenizer has a
// character table, else only the ASCII ones; the others are given no data and come back unhandled), kept
// alive in `held` while the GIL is released. Returns the room in ids they need: capacity(len, ascii) each.
int64_t texts_in_place(const lmroute::WordPiece& wp, nb::list texts, std::vector<nb::object>& held,
                       std::vector<lmroute::WordPiece::Text>& refs) {
    const size_t n = nb::len(texts);
    held.resize(n);
    refs.assign(n, {nullptr, 0, 1});
    int64_t need = 0;
    for (size_t i = 0; i < n; ++i) {
        PyObject* t = PyList_GET_ITEM(texts.ptr(), static_cast<Py_ssize_t>(i));
        if (!PyUnicode_Check(t)) throw nb::type_error(("texts[" + std::to_string(i) + "] is not a str").c_str());
        held[i] = nb::borrow(t);
        const bool ascii = PyUnicode_IS_ASCII(t);
        if (ascii || wp.non_ascii()) {
            const int64_t len = static_cast<int64_t>(PyUnicode_GET_LENGTH(t));
            refs[i] = {PyUnicode_DATA(t), len, static_cast<int>(PyUnicode_KIND(t))};
            need += wp.capacity(len, ascii);
        }
    }
    return need;
}

// The texts through the tokenizer (texts_in_place). Returns (ids written to `ids`, texts handled).
std::pair<int64_t, int64_t> wordpiece_encode(const lmroute::WordPiece& wp, nb::list texts, bool with_template,
                                             Out<int64_t, nb::ndim<1>> ids, Out<int64_t, nb::ndim<1>> lengths,
                                             Out<bool, nb::ndim<1>> handled) {
    const size_t n = nb::len(texts);
    require(lengths.shape(0) == n && handled.shape(0) == n, "lengths and handled must have one entry per text");
    std::vector<nb::object> held;
    std::vector<lmroute::WordPiece::Text> refs;
    const int64_t need = texts_in_place(wp, texts, held, refs);
    require(ids.shape(0) >= static_cast<size_t>(need), "ids has no room for the texts' tokens");
    nb::gil_scoped_release release;
    const int64_t total =
        wp.encode_batch(refs.data(), static_cast<int64_t>(n), with_template, ids.data(), lengths.data(), handled.data());
    return {total, std::count(handled.data(), handled.data() + n, true)};
}

// wordpiece_encode with the template, each text of more than max_tokens ids cut to its first head_end and
// last max_tokens - head_end (WordPiece::encode_cut_batch: a long text is read only as far as those need);
// truncated[i]: whether text i was cut. Returns (ids written, texts handled).
std::pair<int64_t, int64_t> wordpiece_encode_cut(const lmroute::WordPiece& wp, nb::list texts, int64_t max_tokens,
                                                 int64_t head_end, Out<int64_t, nb::ndim<1>> ids,
                                                 Out<int64_t, nb::ndim<1>> lengths, Out<bool, nb::ndim<1>> handled,
                                                 Out<bool, nb::ndim<1>> truncated) {
    const size_t n = nb::len(texts);
    require(lengths.shape(0) == n && handled.shape(0) == n && truncated.shape(0) == n,
            "lengths, handled and truncated must have one entry per text");
    require(0 <= head_end && head_end <= max_tokens, "head_end must be in [0, max_tokens]");
    std::vector<nb::object> held;
    std::vector<lmroute::WordPiece::Text> refs;
    const int64_t need = texts_in_place(wp, texts, held, refs);
    require(ids.shape(0) >= static_cast<size_t>(need), "ids has no room for the texts' tokens");
    nb::gil_scoped_release release;
    const int64_t total = wp.encode_cut_batch(refs.data(), static_cast<int64_t>(n), max_tokens, head_end, ids.data(),
                                              lengths.data(), handled.data(), truncated.data());
    return {total, std::count(handled.data(), handled.data() + n, true)};
}

// The static encoder from text to embedding in one call: each text's ids (as wordpiece_encode gives
// them, template included) cut to max_tokens, its first head_end and last max_tokens - head_end, as
// lmroute.bundle.truncation cuts them (WordPiece::encode_cut_batch: a long text is read only as far as the
// kept ids need), and the kept ids' table rows summed and normalised (token_mean). Returns the texts handled; when one is not (a character left to HF) or
// one has no ids, nothing is written and fewer than len(texts) is returned: the caller takes the
// general path.
int64_t static_embed(const lmroute::WordPiece& wp, nb::list texts, In<float, nb::ndim<2>> table, int64_t max_tokens,
                     int64_t head_end, Out<float, nb::ndim<2>> out, Out<int64_t, nb::ndim<1>> n_tokens,
                     Out<bool, nb::ndim<1>> truncated) {
    const size_t n = nb::len(texts);
    const int64_t d = table.shape(1);
    require(out.shape(0) == n && out.shape(1) == static_cast<size_t>(d), "out must be [len(texts), table dim]");
    require(n_tokens.shape(0) == n && truncated.shape(0) == n, "n_tokens and truncated need one entry per text");
    require(0 <= head_end && head_end <= max_tokens, "head_end must be in [0, max_tokens]");
    std::vector<nb::object> held;
    std::vector<lmroute::WordPiece::Text> refs;
    const int64_t need = texts_in_place(wp, texts, held, refs);
    nb::gil_scoped_release release;
    // room for every text whole (a long text's kept ids are far fewer): left unwritten, so its untouched
    // pages cost nothing, and made with the GIL released (zero-filled before it, 256 long prompts held
    // every other Python thread for ~100 ms)
    std::unique_ptr<int64_t[]> ids(new int64_t[static_cast<size_t>(need)]);
    std::vector<int64_t> offsets(n + 1, 0);
    std::unique_ptr<bool[]> handled(new bool[n]);
    wp.encode_cut_batch(refs.data(), static_cast<int64_t>(n), max_tokens, head_end, ids.get(), n_tokens.data(),
                        handled.get(), truncated.data());
    const int64_t n_handled = std::count(handled.get(), handled.get() + n, true);
    if (n_handled < static_cast<int64_t>(n)) return n_handled;
    for (size_t i = 0; i < n; ++i) {
        // a text of no ids (a template without special tokens) has no direction: the general path refuses it
        if (n_tokens.data()[i] == 0) return 0;
        offsets[i + 1] = offsets[i] + n_tokens.data()[i];
    }
    const int64_t bad = lmroute::token_mean(table.data(), table.shape(0), d, ids.get(), offsets.data(),
                                            static_cast<int64_t>(n), out.data());
    if (bad >= 0) {  // thrown past `release`, which takes the GIL back first
        throw std::invalid_argument("token id " + std::to_string(ids[static_cast<size_t>(bad)]) +
                                    " is outside the table's " + std::to_string(table.shape(0)) + " rows");
    }
    return n_handled;
}

// A WordPiece with the character table given as three uint32 arrays (all empty: ASCII text only).
void wordpiece_init(lmroute::WordPiece* self, const std::vector<std::string>& vocab, int64_t unk_id,
                    const std::string& prefix, int64_t max_chars,
                    const std::vector<std::pair<std::string, int64_t>>& literals, std::vector<int64_t> front,
                    std::vector<int64_t> back, In<uint32_t, nb::ndim<1>> char_blocks,
                    In<uint32_t, nb::ndim<1>> char_entries, In<uint32_t, nb::ndim<1>> char_pool) {
    auto copy = [](const In<uint32_t, nb::ndim<1>>& a) {
        return std::vector<uint32_t>(a.data(), a.data() + a.shape(0));
    };
    new (self) lmroute::WordPiece(vocab, unk_id, prefix, max_chars, literals, std::move(front), std::move(back),
                                  lmroute::CharTable{copy(char_blocks), copy(char_entries), copy(char_pool)});
}

std::string cpu_features() {
    std::string out = "x86-64";
#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("avx512f")) out += " avx512f";
    if (__builtin_cpu_supports("avx2")) out += " avx2";
    if (__builtin_cpu_supports("fma")) out += " fma";
#endif
    return out;
}

}  // namespace

// An output array is written in place: one of another dtype or layout is refused (a TypeError), never
// converted to a copy that is written and dropped while the caller's array stays as it was.
auto out_arg(const char* name) { return nb::arg(name).noconvert(); }

NB_MODULE(_core, m) {
    m.doc() = "lmroute's compiled scoring core (private: use lmroute.kernels.compiled)";
    m.attr("ABI_VERSION") = kAbiVersion;
    m.attr("SOURCE_SHA256") = LMROUTE_SOURCE_SHA256;
    m.def("max_threads", []() { return omp_get_max_threads(); });
    m.def("cpu_features", &cpu_features);
    m.def("sw_scores", &sw_scores, "embeddings"_a, "indptr"_a, "indices"_a, "counts"_a, "cell_a"_a, "cell_b"_a,
          "cell_y"_a, "n_tiers"_a, "queries"_a, "strong"_a, "weak"_a, "gamma"_a, "base"_a, "threads"_a,
          out_arg("out"));
    m.def("sw_scores_from_sims", &sw_scores_from_sims<float>, "sims"_a, "indptr"_a, "indices"_a, "counts"_a,
          "cell_a"_a, "cell_b"_a, "cell_y"_a, "n_tiers"_a, "strong"_a, "weak"_a, "gamma"_a, "base"_a, "threads"_a,
          out_arg("out"));
    m.def("sw_scores_from_sims", &sw_scores_from_sims<double>, "sims"_a, "indptr"_a, "indices"_a, "counts"_a,
          "cell_a"_a, "cell_b"_a, "cell_y"_a, "n_tiers"_a, "strong"_a, "weak"_a, "gamma"_a, "base"_a, "threads"_a,
          out_arg("out"));
    m.def("sw_scores_from_cell_weights", &sw_scores_from_cell_weights, "cell_weights"_a, "cell_a"_a, "cell_b"_a,
          "cell_y"_a, "n_tiers"_a, "strong"_a, "weak"_a, "base"_a, "threads"_a, out_arg("out"));
    m.def("sw_cell_weights", &sw_cell_weights, "embeddings"_a, "indptr"_a, "indices"_a, "counts"_a, "n_cells"_a,
          "queries"_a, "gamma"_a, "threads"_a, out_arg("out"));
    m.def("bt_ratings", &bt_ratings, "cell_a"_a, "cell_b"_a, "cell_y"_a, "n_tiers"_a, "weights"_a, out_arg("out"));
    m.def("mf_dot", &mf_dot, "embeddings"_a, "vectors"_a, "threads"_a, out_arg("out"));
    m.def("mf_pair_probabilities", &mf_pair_probabilities, "embeddings"_a, "pair_vectors"_a, "threads"_a,
          out_arg("out"));
    m.def("fast_exp", &fast_exp, "x"_a, out_arg("out"));
    m.def("token_mean", &token_mean, "table"_a, "ids"_a, "offsets"_a, out_arg("out"));
    m.def("row_dots", &row_dots, "x"_a.noconvert(), "w"_a.noconvert(), out_arg("out"));
    nb::class_<lmroute::WordPiece>(m, "WordPiece")
        .def("__init__", &wordpiece_init, "vocab"_a, "unk_id"_a, "prefix"_a, "max_chars"_a, "literals"_a, "front"_a,
             "back"_a, "char_blocks"_a, "char_entries"_a, "char_pool"_a)
        .def("encode", &wordpiece_encode, "texts"_a, "with_template"_a, out_arg("ids"), out_arg("lengths"),
             out_arg("handled"))
        .def("encode_cut", &wordpiece_encode_cut, "texts"_a, "max_tokens"_a, "head_end"_a, out_arg("ids"),
             out_arg("lengths"), out_arg("handled"), out_arg("truncated"));
    m.def("static_embed", &static_embed, "wp"_a, "texts"_a, "table"_a.noconvert(), "max_tokens"_a, "head_end"_a,
          out_arg("out"), out_arg("n_tokens"), out_arg("truncated"));
    m.def("blend_scores", &blend_scores, "scores"_a, "embeddings"_a, "prior_weights"_a, "prior_bias"_a,
          "prior_center"_a, "prior_scale"_a, "weight"_a, "center"_a, "scale"_a, "logit_eps"_a, out_arg("out"));
}
