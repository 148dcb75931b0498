// BERT WordPiece tokenisation of pure-ASCII text (rules in wordpiece.hpp).
//
// The vocabulary is an open-addressing hash table keyed by the whole token string (FNV-1a, then a mixer).
// A continuation piece hashes as the prefix followed by the piece, so one forward pass over a piece gives
// the key of every candidate length and the longest match is probed first.
#include "wordpiece.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace lmroute {

namespace {

constexpr uint64_t kFnvBasis = 1469598103934665603ULL;
constexpr uint64_t kFnvPrime = 1099511628211ULL;

inline uint64_t fnv_step(uint64_t s, unsigned char c) { return (s ^ c) * kFnvPrime; }

inline uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

enum ByteClass : unsigned char { kWord, kDrop, kSpace, kPunct, kNonAscii };

struct ByteClasses {
    ByteClass of[256];
    ByteClasses() {
        for (int c = 0; c < 256; ++c) {
            if (c >= 0x80)
                of[c] = kNonAscii;
            else if (c == '\t' || c == '\n' || c == '\r' || c == ' ')
                of[c] = kSpace;
            else if (c < 0x20 || c == 0x7f)
                of[c] = kDrop;
            else if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126))
                of[c] = kPunct;
            else
                of[c] = kWord;
        }
    }
};

const ByteClasses kClasses;

inline char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + ('a' - 'A')) : c; }

}  // namespace

WordPiece::WordPiece(const std::vector<std::string>& vocab, int64_t unk_id, const std::string& prefix,
                     int64_t max_chars, const std::vector<std::pair<std::string, int64_t>>& literals,
                     std::vector<int64_t> front, std::vector<int64_t> back)
    : prefix_(prefix), unk_id_(unk_id), max_chars_(max_chars), front_(std::move(front)), back_(std::move(back)) {
    if (max_chars < 0) throw std::invalid_argument("max_chars must be >= 0");
    uint64_t cap = 16;
    while (cap < 2 * vocab.size()) cap <<= 1;
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
    for (size_t id = 0; id < vocab.size(); ++id) {
        const std::string& tok = vocab[id];
        uint64_t s = kFnvBasis;
        for (char c : tok) s = fnv_step(s, static_cast<unsigned char>(c));
        const uint64_t h = mix(s);
        if (find(h, false, tok.data(), static_cast<int64_t>(tok.size())) >= 0)
            throw std::invalid_argument("the vocabulary holds the token '" + tok + "' twice");
        uint64_t i = h & mask_;
        while (slots_[i].id >= 0) i = (i + 1) & mask_;
        slots_[i] = Slot{h, static_cast<uint32_t>(pool_.size()), static_cast<uint32_t>(tok.size()),
                         static_cast<int64_t>(id)};
        pool_ += tok;
        max_token_len_ = std::max<int64_t>(max_token_len_, static_cast<int64_t>(tok.size()));
    }
    prefix_state_ = kFnvBasis;
    for (char c : prefix_) prefix_state_ = fnv_step(prefix_state_, static_cast<unsigned char>(c));
    for (const auto& lit : literals) {
        if (lit.first.empty()) continue;
        literals_.push_back(lit);
        literal_start_[static_cast<unsigned char>(lit.first[0])] = true;
    }
    std::stable_sort(literals_.begin(), literals_.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
}

int64_t WordPiece::find(uint64_t hash, bool continuation, const char* piece, int64_t n) const {
    const uint64_t plen = continuation ? prefix_.size() : 0;
    for (uint64_t i = hash & mask_; slots_[i].id >= 0; i = (i + 1) & mask_) {
        const Slot& s = slots_[i];
        if (s.hash != hash || s.len != plen + static_cast<uint64_t>(n)) continue;
        const char* tok = pool_.data() + s.offset;
        if (std::memcmp(tok, prefix_.data(), plen) == 0 && std::memcmp(tok + plen, piece, n) == 0) return s.id;
    }
    return -1;
}

int64_t WordPiece::word(const char* w, int64_t n, int64_t* out, uint64_t* states) const {
    if (n > max_chars_) {
        out[0] = unk_id_;
        return 1;
    }
    int64_t k = 0;
    for (int64_t start = 0; start < n;) {
        const int64_t lim = std::min(n - start, max_token_len_);
        uint64_t s = start > 0 ? prefix_state_ : kFnvBasis;
        for (int64_t j = 0; j < lim; ++j) {
            s = fnv_step(s, static_cast<unsigned char>(w[start + j]));
            states[j] = mix(s);
        }
        int64_t id = -1, len = lim;
        for (; len > 0; --len)
            if ((id = find(states[len - 1], start > 0, w + start, len)) >= 0) break;
        if (id < 0) {  // a part matches nothing: the whole word is unknown
            out[0] = unk_id_;
            return 1;
        }
        out[k++] = id;
        start += len;
    }
    return k;
}

int64_t WordPiece::literal_at(const char* text, int64_t len, int64_t i, int64_t* id) const {
    for (const auto& lit : literals_) {  // longest first
        const int64_t n = static_cast<int64_t>(lit.first.size());
        if (n <= len - i && std::memcmp(text + i, lit.first.data(), n) == 0) {
            *id = lit.second;
            return n;
        }
    }
    return 0;
}

int64_t WordPiece::encode(const char* text, int64_t len, bool with_template, int64_t* out, char* word_buf,
                          uint64_t* states) const {
    int64_t k = 0, wn = 0;  // wn counts the word's bytes; only the first max_chars_ are kept
    const int64_t keep = std::min(max_chars_, len);
    auto flush = [&]() {
        if (wn > 0) k += word(word_buf, wn, out + k, states);
        wn = 0;
    };
    if (with_template)
        for (int64_t id : front_) out[k++] = id;
    for (int64_t i = 0; i < len; ++i) {
        const unsigned char c = static_cast<unsigned char>(text[i]);
        int64_t lit_id = 0, lit_len = 0;
        if (literal_start_[c] && (lit_len = literal_at(text, len, i, &lit_id)) > 0) {
            flush();
            out[k++] = lit_id;
            i += lit_len - 1;
            continue;
        }
        switch (kClasses.of[c]) {
            case kWord:
                if (wn < keep) word_buf[wn] = lower(static_cast<char>(c));
                ++wn;
                break;
            case kDrop:
                break;
            case kSpace:
                flush();
                break;
            case kPunct:
                flush();
                k += word(text + i, 1, out + k, states);
                break;
            case kNonAscii:
                return -1;
        }
    }
    flush();
    if (with_template)
        for (int64_t id : back_) out[k++] = id;
    return k;
}

int64_t WordPiece::encode_batch(const Text* texts, int64_t n, bool with_template, int64_t* ids, int64_t* lengths,
                                bool* handled) const {
    int64_t longest = 0;
    for (int64_t i = 0; i < n; ++i)
        if (texts[i].data != nullptr) longest = std::max(longest, texts[i].len);
    std::vector<char> word_buf(static_cast<size_t>(std::min(max_chars_, longest)) + 1);
    std::vector<uint64_t> states(static_cast<size_t>(max_token_len_) + 1);
    int64_t total = 0;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t got = texts[i].data == nullptr
                                ? -1
                                : encode(texts[i].data, texts[i].len, with_template, ids + total, word_buf.data(),
                                         states.data());
        handled[i] = got >= 0;
        lengths[i] = std::max<int64_t>(got, 0);
        total += lengths[i];
    }
    return total;
}

}  // namespace lmroute
