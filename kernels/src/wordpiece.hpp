// BERT WordPiece tokenisation, id for id what HF `tokenizers` gives for a tokenizer.json made of: added
// tokens matched literally on the raw text (normalized false, no strip, not single-word), BertNormalizer
// (clean_text, handle_chinese_chars, strip_accents, lowercase), BertPreTokenizer and a WordPiece model, with
// a template that puts fixed special tokens before and after the text.
//
// The rules (lmroute/kernels/compiled.py checks that the file is of this kind):
// 1. Added tokens: left to right, at each position the longest literal that starts there is taken whole
//    (its id); the text between literals goes through 2-4.
// 2. Normalise: ASCII bytes 0x00-0x08, 0x0B, 0x0C, 0x0E-0x1F and 0x7F are dropped (they do not split a
//    word); '\t', '\n', '\r' become ' '; A-Z become a-z. A non-ASCII character becomes what its entry in
//    the character table says (lmroute/kernels/wordpiece_chars.py builds it from HF's rules): nothing,
//    a space, itself alone (punctuation, CJK ideographs), itself in the word, or a few characters of those
//    kinds (its NFD without nonspacing marks, lowercased); or it is left to HF, and so is its text.
// 3. Pre-tokenise: ' ' separates words; each ASCII punctuation byte !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~ and
//    each character the table puts alone is a word of its own.
// 4. WordPiece: a word of more than max_chars characters is the unknown token; otherwise greedy longest
//    match from the left over its UTF-8 bytes, pieces after the first looked up with the continuation
//    prefix ("##"); a word with a part that matches nothing is the unknown token as a whole. Matching bytes
//    is matching characters: the vocabulary is valid UTF-8, so a piece that ends inside a character
//    matches no token.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace lmroute {

// The character table of rule 2 for code points 0 .. 0x10FFFF, two-stage: entries[blocks[cp >> 8] * 256 +
// (cp & 255)]. An entry's low 3 bits are its kind; a kMapped entry holds the number of characters it becomes
// in bits 3-7 and where they start in `pool` in bits 8-31; a pool item is a code point | (kind << 21), kind
// kWord, kSpace or kAlone. Empty: non-ASCII text is left to HF.
struct CharTable {
    enum Kind : uint32_t { kWord = 0, kDrop = 1, kSpace = 2, kAlone = 3, kMapped = 4, kLeftToHf = 5 };
    std::vector<uint32_t> blocks, entries, pool;
};

class WordPiece {
   public:
    // vocab: token strings, index = id. literals: (text, id) of the added tokens. Throws invalid_argument
    // for a table whose indices leave it.
    WordPiece(const std::vector<std::string>& vocab, int64_t unk_id, const std::string& prefix, int64_t max_chars,
              const std::vector<std::pair<std::string, int64_t>>& literals, std::vector<int64_t> front,
              std::vector<int64_t> back, CharTable chars);

    struct Text {
        const void* data;  // nullptr: not for this tokenizer (sent elsewhere)
        int64_t len;       // characters
        int kind;          // bytes per character (1, 2 or 4: Python's str layouts), each one a code point
    };

    // Ids of each text, with the template's tokens around them or not, one after the other in `ids` (room
    // for the sum of capacity(len, ascii) over the texts); lengths[i] = ids of text i, handled[i] = false
    // (and lengths[i] = 0) for a text without data or with a character left to HF. Returns the ids
    // written. Thread-safe.
    int64_t encode_batch(const Text* texts, int64_t n, bool with_template, int64_t* ids, int64_t* lengths,
                         bool* handled) const;
    // The ids of each text with the template's tokens, a text of more than max_tokens ids cut as
    // lmroute.bundle.truncation.cut_positions cuts it (its first head_end ids and its last max_tokens - head_end), written as
    // encode_batch writes them (lengths[i]: the ids kept; truncated[i]: whether text i was cut). A long
    // text is read only as far as the ids kept need: its tail from a word boundary far enough back
    // (boundary_after), then its head until one id past head_end, so the part cut away costs nothing (a
    // character left to HF there does not send the text to HF: it changes no kept id); a long text with
    // no such boundary is read whole. Same room in `ids` as encode_batch. Thread-safe.
    int64_t encode_cut_batch(const Text* texts, int64_t n, int64_t max_tokens, int64_t head_end, int64_t* ids,
                             int64_t* lengths, bool* handled, bool* truncated) const;
    // A character becomes at most `widest` characters, each at most one id.
    int64_t capacity(int64_t len, bool ascii) const {
        return len * (ascii ? 1 : widest_) + static_cast<int64_t>(front_.size() + back_.size());
    }
    bool non_ascii() const { return !chars_.entries.empty(); }

   private:
    struct Slot {
        uint64_t hash = 0;
        uint32_t offset = 0;  // into pool_
        uint32_t len = 0;
        int64_t id = -1;  // -1: empty slot
    };

    int64_t find(uint64_t hash, bool continuation, const char* piece, int64_t n) const;
    // A tail is first looked for this many characters per id it needs (twice as many each time it falls short).
    static constexpr int64_t kTailCharsPerId = 6;

    // The ids of text[0 .. len), the template's front / back tokens around them when asked; stops before the
    // next character once stop_at ids are written (all final). -1: a character left to HF.
    template <typename CharT>
    int64_t encode(const CharT* text, int64_t len, bool front, bool back, int64_t* out, char* word_buf,
                   uint64_t* states, int64_t stop_at = INT64_MAX) const;
    // Whether a text's ids from just after character c on are the last ids of the whole text: c ends a
    // word whatever follows (a space, or punctuation, a CJK ideograph and the like: a word of its own) and
    // no literal holds it (a literal match never spans it).
    bool boundary_after(uint32_t c) const;
    template <typename CharT>
    int64_t encode_cut(const CharT* text, int64_t len, int64_t max_tokens, int64_t head_end, int64_t* out,
                       int64_t* tail_buf, char* word_buf, uint64_t* states, bool* truncated) const;
    int64_t word(const char* w, int64_t n_bytes, int64_t n_chars, int64_t* out, uint64_t* states) const;
    template <typename CharT>
    int64_t literal_at(const CharT* text, int64_t len, int64_t i, int64_t* id) const;
    uint32_t char_entry(uint32_t cp) const {
        return chars_.entries[(static_cast<size_t>(chars_.blocks[cp >> 8]) << 8) | (cp & 0xffu)];
    }

    std::string pool_;
    std::vector<Slot> slots_;
    uint64_t mask_ = 0;
    uint64_t prefix_state_ = 0;  // hash state after the continuation prefix
    std::string prefix_;
    int64_t max_token_len_ = 0;
    // [continuation][byte]: the longest piece (bytes, 255: 255 or more) of a token whose piece starts with
    // the byte, as a first piece or after the prefix; 0: none does
    uint8_t longest_piece_[2][256] = {};
    int64_t unk_id_;
    int64_t max_chars_;
    std::vector<std::pair<std::u32string, int64_t>> literals_;  // code points, longest first
    bool literal_start_[256] = {};   // a literal starts with this code point
    bool literal_start_wide_ = false;  // a literal starts with a code point >= 256
    std::vector<char32_t> literal_chars_;  // the code points the literals hold, sorted
    // ASCII characters after which encode_cut may start a tail: a space or punctuation no literal holds
    bool boundary_ascii_[0x80] = {};
    std::vector<int64_t> front_, back_;
    CharTable chars_;
    int64_t widest_ = 1;
};

}  // namespace lmroute
