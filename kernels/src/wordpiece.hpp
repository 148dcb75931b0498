// BERT WordPiece tokenisation of pure-ASCII text, id for id what HF `tokenizers` gives for a tokenizer.json
// made of: added tokens matched literally on the raw text (normalized false, no strip, not single-word),
// BertNormalizer (clean_text, lowercase), BertPreTokenizer and a WordPiece model, with a template that puts
// fixed special tokens before and after the text.
//
// The rules, for ASCII text (lmroute/kernels/compiled.py checks that the file is of this kind):
// 1. Added tokens: left to right, at each position the longest literal that starts there is taken whole
//    (its id); the text between literals goes through 2-4.
// 2. Normalise: bytes 0x00-0x08, 0x0B, 0x0C, 0x0E-0x1F and 0x7F are dropped (they do not split a word);
//    '\t', '\n', '\r' become ' '; A-Z become a-z.
// 3. Pre-tokenise: ' ' separates words; each ASCII punctuation byte !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~ is a
//    word of its own.
// 4. WordPiece: a word of more than max_chars bytes is the unknown token; otherwise greedy longest match
//    from the left, pieces after the first looked up with the continuation prefix ("##"); a word with a
//    part that matches nothing is the unknown token as a whole.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace lmroute {

class WordPiece {
   public:
    // vocab: token strings, index = id. literals: (text, id) of the added tokens.
    WordPiece(const std::vector<std::string>& vocab, int64_t unk_id, const std::string& prefix, int64_t max_chars,
              const std::vector<std::pair<std::string, int64_t>>& literals, std::vector<int64_t> front,
              std::vector<int64_t> back);

    struct Text {
        const char* data;  // nullptr: not for this tokenizer (sent elsewhere)
        int64_t len;
    };

    // Ids of each text, with the template's tokens around them or not, one after the other in `ids` (room
    // for the sum of capacity(len) over the texts); lengths[i] = ids of text i, handled[i] = false (and
    // lengths[i] = 0) for a text without data or with a byte >= 0x80. Returns the ids written. Thread-safe.
    int64_t encode_batch(const Text* texts, int64_t n, bool with_template, int64_t* ids, int64_t* lengths,
                         bool* handled) const;
    int64_t capacity(int64_t len) const { return len + static_cast<int64_t>(front_.size() + back_.size()); }

   private:
    struct Slot {
        uint64_t hash = 0;
        uint32_t offset = 0;  // into pool_
        uint32_t len = 0;
        int64_t id = -1;  // -1: empty slot
    };

    int64_t find(uint64_t hash, bool continuation, const char* piece, int64_t n) const;
    int64_t encode(const char* text, int64_t len, bool with_template, int64_t* out, char* word_buf,
                   uint64_t* states) const;
    int64_t word(const char* w, int64_t n, int64_t* out, uint64_t* states) const;
    int64_t literal_at(const char* text, int64_t len, int64_t i, int64_t* id) const;

    std::string pool_;
    std::vector<Slot> slots_;
    uint64_t mask_ = 0;
    uint64_t prefix_state_ = 0;  // hash state after the continuation prefix
    std::string prefix_;
    int64_t max_token_len_ = 0;
    int64_t unk_id_;
    int64_t max_chars_;
    std::vector<std::pair<std::string, int64_t>> literals_;  // longest first
    bool literal_start_[256] = {};
    std::vector<int64_t> front_, back_;
};

}  // namespace lmroute
