// BERT WordPiece tokenisation (rules in wordpiece.hpp).
//
// The vocabulary is an open-addressing hash table keyed by the whole token string (FNV-1a, then a mixer).
// A continuation piece hashes as the prefix followed by the piece, so one forward pass over a piece gives
// the key of every candidate length and the longest match is probed first. Texts are read in Python's own
// layout (1, 2 or 4 bytes per character); ASCII goes through a byte table, other characters through the
// character table, and a word is gathered as UTF-8 (the vocabulary's encoding).
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

constexpr uint32_t kMaxCodePoint = 0x10FFFF;

// Writes the UTF-8 bytes of a code point (<= kMaxCodePoint) and returns how many.
inline int64_t put_utf8(uint32_t cp, char* out) {
    if (cp < 0x80) {
        out[0] = static_cast<char>(cp);
        return 1;
    }
    if (cp < 0x800) {
        out[0] = static_cast<char>(0xC0 | (cp >> 6));
        out[1] = static_cast<char>(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = static_cast<char>(0xE0 | (cp >> 12));
        out[1] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out[2] = static_cast<char>(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = static_cast<char>(0xF0 | (cp >> 18));
    out[1] = static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out[2] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out[3] = static_cast<char>(0x80 | (cp & 0x3F));
    return 4;
}

// The code points of a UTF-8 string (a literal from Python, so valid UTF-8).
std::u32string code_points(const std::string& s) {
    std::u32string out;
    for (size_t i = 0; i < s.size();) {
        const unsigned char b = static_cast<unsigned char>(s[i]);
        const int n = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
        if (i + n > s.size()) throw std::invalid_argument("a literal is not valid UTF-8");
        uint32_t cp = n == 1 ? b : b & (0x7F >> n);
        for (int j = 1; j < n; ++j) cp = (cp << 6) | (static_cast<unsigned char>(s[i + j]) & 0x3F);
        out.push_back(cp);
        i += n;
    }
    return out;
}

void check_table(const CharTable& t) {
    if (t.entries.empty() && t.blocks.empty() && t.pool.empty()) return;
    const size_t n_blocks = (kMaxCodePoint >> 8) + 1;
    if (t.blocks.size() != n_blocks || t.entries.empty() || t.entries.size() % 256 != 0)
        throw std::invalid_argument("the character table needs 4352 blocks and whole blocks of 256 entries");
    for (uint32_t b : t.blocks)
        if (b >= t.entries.size() / 256) throw std::invalid_argument("a character block index leaves the table");
    for (uint32_t e : t.entries) {
        const uint32_t kind = e & 7u;
        if (kind > CharTable::kLeftToHf) throw std::invalid_argument("a character entry has an unknown kind");
        if (kind == CharTable::kMapped && ((e >> 3) & 31u) + (e >> 8) > t.pool.size())
            throw std::invalid_argument("a mapped character leaves the pool");
    }
    for (uint32_t item : t.pool) {
        const uint32_t kind = item >> 21;
        if ((kind != CharTable::kWord && kind != CharTable::kSpace && kind != CharTable::kAlone) ||
            (item & 0x1FFFFF) > kMaxCodePoint)
            throw std::invalid_argument("a pool item is not a word, space or alone code point");
    }
}

}  // namespace

WordPiece::WordPiece(const std::vector<std::string>& vocab, int64_t unk_id, const std::string& prefix,
                     int64_t max_chars, const std::vector<std::pair<std::string, int64_t>>& literals,
                     std::vector<int64_t> front, std::vector<int64_t> back, CharTable chars)
    : prefix_(prefix),
      unk_id_(unk_id),
      max_chars_(max_chars),
      front_(std::move(front)),
      back_(std::move(back)),
      chars_(std::move(chars)) {
    if (max_chars < 0) throw std::invalid_argument("max_chars must be >= 0");
    check_table(chars_);
    for (uint32_t e : chars_.entries)
        if ((e & 7u) == CharTable::kMapped) widest_ = std::max<int64_t>(widest_, (e >> 3) & 31u);
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
        if (!tok.empty()) {
            uint8_t& first = longest_piece_[0][static_cast<unsigned char>(tok[0])];
            first = static_cast<uint8_t>(std::min<size_t>(255, std::max<size_t>(first, tok.size())));
        }
        if (tok.size() > prefix.size() && tok.compare(0, prefix.size(), prefix) == 0) {
            uint8_t& next = longest_piece_[1][static_cast<unsigned char>(tok[prefix.size()])];
            next = static_cast<uint8_t>(std::min<size_t>(255, std::max<size_t>(next, tok.size() - prefix.size())));
        }
        max_token_len_ = std::max<int64_t>(max_token_len_, static_cast<int64_t>(tok.size()));
    }
    prefix_state_ = kFnvBasis;
    for (char c : prefix_) prefix_state_ = fnv_step(prefix_state_, static_cast<unsigned char>(c));
    for (const auto& lit : literals) {
        if (lit.first.empty()) continue;
        literals_.emplace_back(code_points(lit.first), lit.second);
        for (char32_t c : literals_.back().first) literal_chars_.push_back(c);
        const char32_t first = literals_.back().first[0];
        if (first < 256)
            literal_start_[first] = true;
        else
            literal_start_wide_ = true;
    }
    std::stable_sort(literals_.begin(), literals_.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
    std::sort(literal_chars_.begin(), literal_chars_.end());
    literal_chars_.erase(std::unique(literal_chars_.begin(), literal_chars_.end()), literal_chars_.end());
    for (uint32_t c = 0; c < 0x80; ++c)
        boundary_ascii_[c] = (kClasses.of[c] == kSpace || kClasses.of[c] == kPunct) &&
                             !std::binary_search(literal_chars_.begin(), literal_chars_.end(), char32_t(c));
}

bool WordPiece::boundary_after(uint32_t c) const {
    if (c < 0x80) return boundary_ascii_[c];
    if (chars_.entries.empty() || c > kMaxCodePoint) return false;
    const uint32_t kind = char_entry(c) & 7u;
    return (kind == CharTable::kSpace || kind == CharTable::kAlone) &&
           !std::binary_search(literal_chars_.begin(), literal_chars_.end(), char32_t(c));
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

int64_t WordPiece::word(const char* w, int64_t n, int64_t n_chars, int64_t* out, uint64_t* states) const {
    if (n_chars > max_chars_) {
        out[0] = unk_id_;
        return 1;
    }
    int64_t k = 0;
    for (int64_t start = 0; start < n;) {
        const uint8_t longest = longest_piece_[start > 0][static_cast<unsigned char>(w[start])];
        const int64_t lim = std::min<int64_t>(n - start, longest == 255 ? max_token_len_ : longest);
        uint64_t s = start > 0 ? prefix_state_ : kFnvBasis;
        for (int64_t j = 0; j < lim; ++j) {
            s = fnv_step(s, static_cast<unsigned char>(w[start + j]));
            states[j] = s;  // mixed only for the lengths probed
        }
        int64_t id = -1, len = lim;
        for (; len > 0; --len) {
            // a piece that ends inside a character (the next byte continues it) matches no token: skip it
            if (start + len < n && (static_cast<unsigned char>(w[start + len]) & 0xC0) == 0x80) continue;
            if ((id = find(mix(states[len - 1]), start > 0, w + start, len)) >= 0) break;
        }
        if (id < 0) {  // a part matches nothing: the whole word is unknown
            out[0] = unk_id_;
            return 1;
        }
        out[k++] = id;
        start += len;
    }
    return k;
}

template <typename CharT>
int64_t WordPiece::literal_at(const CharT* text, int64_t len, int64_t i, int64_t* id) const {
    for (const auto& lit : literals_) {  // longest first
        const int64_t n = static_cast<int64_t>(lit.first.size());
        if (n > len - i) continue;
        int64_t j = 0;
        while (j < n && static_cast<char32_t>(text[i + j]) == lit.first[j]) ++j;
        if (j == n) {
            *id = lit.second;
            return n;
        }
    }
    return 0;
}

template <typename CharT>
int64_t WordPiece::encode(const CharT* text, int64_t len, bool front, bool back, int64_t* out, char* word_buf,
                          uint64_t* states, int64_t stop_at) const {
    // The word so far: wn characters, wb bytes of UTF-8 in word_buf; only the first max_chars_ characters are
    // kept (a longer word is the unknown token whatever it holds).
    int64_t k = 0, wn = 0, wb = 0;
    char alone[4];
    auto flush = [&]() {
        if (wn > 0) k += word(word_buf, wb, wn, out + k, states);
        wn = wb = 0;
    };
    auto add = [&](uint32_t kind, uint32_t cp) {
        switch (kind) {
            case CharTable::kWord:
                if (wn < max_chars_) wb += put_utf8(cp, word_buf + wb);
                ++wn;
                break;
            case CharTable::kSpace:
                flush();
                break;
            default:  // kAlone
                flush();
                k += word(alone, put_utf8(cp, alone), 1, out + k, states);
        }
    };
    if (front)
        for (int64_t id : front_) out[k++] = id;
    for (int64_t i = 0; i < len; ++i) {
        if (k >= stop_at) return k;  // every id so far is final: a word's ids are written when it ends
        const uint32_t c = static_cast<uint32_t>(text[i]);
        int64_t lit_id = 0, lit_len = 0;
        if ((c < 256 ? literal_start_[c] : literal_start_wide_) && (lit_len = literal_at(text, len, i, &lit_id)) > 0) {
            flush();
            out[k++] = lit_id;
            i += lit_len - 1;
            continue;
        }
        switch (c < 0x80 ? kClasses.of[c] : kNonAscii) {
            case kWord:
                if (wn < max_chars_) word_buf[wb++] = lower(static_cast<char>(c));
                ++wn;
                break;
            case kDrop:
                break;
            case kSpace:
                flush();
                break;
            case kPunct:
                flush();
                alone[0] = static_cast<char>(c);
                k += word(alone, 1, 1, out + k, states);
                break;
            case kNonAscii: {
                if (chars_.entries.empty() || c > kMaxCodePoint) return -1;
                const uint32_t e = char_entry(c);
                const uint32_t kind = e & 7u;
                if (kind == CharTable::kDrop) break;
                if (kind == CharTable::kLeftToHf) return -1;
                if (kind != CharTable::kMapped) {
                    add(kind, c);
                    break;
                }
                const uint32_t* item = chars_.pool.data() + (e >> 8);
                for (uint32_t j = 0, n = (e >> 3) & 31u; j < n; ++j) add(item[j] >> 21, item[j] & 0x1FFFFF);
                break;
            }
        }
    }
    flush();
    if (back)
        for (int64_t id : back_) out[k++] = id;
    return k;
}

int64_t WordPiece::encode_batch(const Text* texts, int64_t n, bool with_template, int64_t* ids, int64_t* lengths,
                                bool* handled) const {
    int64_t longest = 0;
    for (int64_t i = 0; i < n; ++i)
        if (texts[i].data != nullptr) longest = std::max(longest, texts[i].len);
    // the kept characters of a word, 4 UTF-8 bytes at most each
    std::vector<char> word_buf(4 * static_cast<size_t>(std::min(max_chars_, longest * widest_)) + 4);
    std::vector<uint64_t> states(static_cast<size_t>(max_token_len_) + 1);
    int64_t total = 0;
    for (int64_t i = 0; i < n; ++i) {
        const Text& t = texts[i];
        int64_t got = -1;
        if (t.data != nullptr) {
            int64_t* out = ids + total;
            if (t.kind == 1)
                got = encode(static_cast<const uint8_t*>(t.data), t.len, with_template, with_template, out,
                             word_buf.data(), states.data());
            else if (t.kind == 2)
                got = encode(static_cast<const uint16_t*>(t.data), t.len, with_template, with_template, out,
                             word_buf.data(), states.data());
            else if (t.kind == 4)
                got = encode(static_cast<const uint32_t*>(t.data), t.len, with_template, with_template, out,
                             word_buf.data(), states.data());
        }
        handled[i] = got >= 0;
        lengths[i] = std::max<int64_t>(got, 0);
        total += lengths[i];
    }
    return total;
}

template <typename CharT>
int64_t WordPiece::encode_cut(const CharT* text, int64_t len, int64_t max_tokens, int64_t head_end, int64_t* out,
                              int64_t* tail_buf, char* word_buf, uint64_t* states, bool* truncated) const {
    const int64_t n_back = static_cast<int64_t>(back_.size());
    const int64_t tail_keep = max_tokens - head_end;                  // ids kept from the end, template included
    const int64_t tail_need = std::max<int64_t>(tail_keep - n_back, 0);  // of them, ids of the text
    auto cut = [&](int64_t k) {  // out holds the whole text's k ids: cut them as cut_positions does
        *truncated = k > max_tokens;
        if (!*truncated) return k;
        std::memmove(out + head_end, out + k - tail_keep, static_cast<size_t>(tail_keep) * sizeof(int64_t));
        return max_tokens;
    };
    const bool fits = len * widest_ + static_cast<int64_t>(front_.size()) + n_back <= max_tokens;
    if (fits) {
        const int64_t k = encode(text, len, true, true, out, word_buf, states);
        return k < 0 ? k : cut(k);
    }
    // The tail: the text from just after a character that ends a word whatever follows and that no literal
    // holds (so its ids from there are the whole text's last ones), far enough back to hold tail_need ids;
    // wider until it does.
    int64_t start = len, c = 0;
    // each try reads at least twice the last one's characters, so a text read in tries costs at most
    // about twice reading it whole (a boundary far back makes a try long)
    for (int64_t chars = std::max<int64_t>(kTailCharsPerId * tail_need, 1); tail_need > 0;
         chars = 2 * std::max(chars, len - start)) {
        start = len - chars;
        while (start > 0 && !boundary_after(static_cast<uint32_t>(text[start - 1]))) --start;
        if (start <= 0) {
            const int64_t k = encode(text, len, true, true, out, word_buf, states);
            return k < 0 ? k : cut(k);
        }
        c = encode(text + start, len - start, false, false, tail_buf, word_buf, states);
        if (c < 0) return -1;
        if (c >= tail_need) break;
    }
    std::copy(back_.begin(), back_.end(), tail_buf + c);
    const int64_t t = c + n_back;  // >= tail_keep
    // The head: the text before the tail, read until one id past the head's (the text is then longer than
    // max_tokens, whatever lies between) or to the tail (head and tail are then the whole text).
    const int64_t h = encode(text, start, true, false, out, word_buf, states, head_end + 1);
    if (h < 0) return -1;
    if (h > head_end) {
        *truncated = true;
        std::copy(tail_buf + t - tail_keep, tail_buf + t, out + head_end);
        return max_tokens;
    }
    std::copy(tail_buf, tail_buf + t, out + h);
    return cut(h + t);
}

int64_t WordPiece::encode_cut_batch(const Text* texts, int64_t n, int64_t max_tokens, int64_t head_end, int64_t* ids,
                                    int64_t* lengths, bool* handled, bool* truncated) const {
    int64_t longest = 0;
    for (int64_t i = 0; i < n; ++i)
        if (texts[i].data != nullptr) longest = std::max(longest, texts[i].len);
    std::vector<char> word_buf(4 * static_cast<size_t>(std::min(max_chars_, longest * widest_)) + 4);
    std::vector<uint64_t> states(static_cast<size_t>(max_token_len_) + 1);
    std::vector<int64_t> tail_buf(static_cast<size_t>(capacity(longest, false)));
    int64_t total = 0;
    for (int64_t i = 0; i < n; ++i) {
        const Text& t = texts[i];
        int64_t got = -1;
        truncated[i] = false;
        int64_t* out = ids + total;
        if (t.data != nullptr) {
            if (t.kind == 1)
                got = encode_cut(static_cast<const uint8_t*>(t.data), t.len, max_tokens, head_end, out,
                                 tail_buf.data(), word_buf.data(), states.data(), truncated + i);
            else if (t.kind == 2)
                got = encode_cut(static_cast<const uint16_t*>(t.data), t.len, max_tokens, head_end, out,
                                 tail_buf.data(), word_buf.data(), states.data(), truncated + i);
            else if (t.kind == 4)
                got = encode_cut(static_cast<const uint32_t*>(t.data), t.len, max_tokens, head_end, out,
                                 tail_buf.data(), word_buf.data(), states.data(), truncated + i);
        }
        handled[i] = got >= 0;
        if (got < 0) truncated[i] = false;
        lengths[i] = std::max<int64_t>(got, 0);
        total += lengths[i];
    }
    return total;
}

}  // namespace lmroute
