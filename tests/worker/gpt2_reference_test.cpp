// GPT-2 BPE token for token against the npm package gpt-3-encoder (run with node), on more than 5 MB
// of varied real text found on this machine: Debian's fortunes, Python and C sources, man pages, and
// a generated Unicode torture text (CJK, combining marks, emoji, right-to-left scripts, NUL and other
// control characters, long runs of spaces and punctuation, Unicode digits and spaces).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include "worker/tokenizer.h"

namespace fs = std::filesystem;
using ratio::worker::Gpt2Tokenizer;
using ratio::worker::utf8_encode;

namespace {

constexpr size_t kUnitBytes = 4000;  // texts are cut at the first line end after this many bytes

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string run(const std::string& command) {
  std::string out;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) return out;
  char buf[1 << 16];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, pipe)) > 0;) out.append(buf, n);
  ::pclose(pipe);
  return out;
}

// JavaScript strings cannot hold invalid UTF-8: node would read each bad sequence as U+FFFD, so the
// reference is given exactly that (the invalid-byte round trip is tested in tokenizer_test.cpp).
std::string valid_utf8(const std::string& text) {
  std::string out;
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = text[i];
    size_t len = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    uint32_t cp = len == 1 ? c : c & (0x7F >> len);
    bool ok = len > 0 && i + len <= text.size();
    for (size_t k = 1; ok && k < len; ++k) {
      ok = (static_cast<unsigned char>(text[i + k]) & 0xC0) == 0x80;
      cp = (cp << 6) | (text[i + k] & 0x3F);
    }
    const uint32_t smallest[5] = {0, 0, 0x80, 0x800, 0x10000};
    ok = ok && cp >= smallest[len] && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
    out += ok ? text.substr(i, len) : utf8_encode(0xFFFD);
    i += ok ? len : 1;
  }
  return out;
}

struct Corpus {
  std::vector<std::string> units, kinds;  // texts encoded one by one, and where each came from
  std::map<std::string, size_t> bytes;    // kind -> bytes
  size_t total = 0;

  void add(const std::string& kind, const std::string& text) {
    for (size_t i = 0; i < text.size();) {
      size_t end = text.find('\n', i + kUnitBytes);
      end = end == std::string::npos ? text.size() : end + 1;
      units.push_back(text.substr(i, end - i));
      kinds.push_back(kind);
      i = end;
    }
    bytes[kind] += text.size();
    total += text.size();
  }

  // Files of `dir` whose name passes `keep`, sorted, read with `read`, until `budget` bytes.
  void add_files(const std::string& kind, const std::string& dir, const std::function<bool(const fs::path&)>& keep,
                 const std::function<std::string(const std::string&)>& read, size_t budget) {
    std::vector<fs::path> paths;
    std::error_code ec;
    for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec))
      if (it->is_regular_file() && keep(it->path())) paths.push_back(it->path());
    std::sort(paths.begin(), paths.end());
    const size_t start = bytes[kind];
    for (const fs::path& p : paths) {
      if (bytes[kind] - start >= budget) break;
      add(kind, valid_utf8(read(p.string())));
    }
  }
};

std::string python_stdlib() {
  for (const char* dir : {"/usr/lib/python3.11", "/usr/lib/python3.12", "/usr/lib/python3.10", "/usr/lib/python3.13"})
    if (fs::is_directory(dir)) return dir;
  return "/usr/lib/python3";
}

// Deterministic text that exercises every branch of GPT-2's pre-tokenizer and the byte alphabet.
std::string torture_text(size_t bytes) {
  std::mt19937 rng(17);
  auto pick = [&](uint32_t lo, uint32_t hi) { return std::uniform_int_distribution<uint32_t>(lo, hi)(rng); };
  auto run_of = [&](size_t n, const std::function<std::string()>& one) {
    std::string s;
    for (size_t k = 0; k < n; ++k) s += one();
    return s;
  };
  auto from = [&](uint32_t lo, uint32_t hi) { return [&, lo, hi] { return utf8_encode(pick(lo, hi)); }; };
  const std::string punctuation = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
  const std::vector<std::string> words = {"don't", "I'M", "you're", "it's'", "''s", "'S", "we'll", "they'd",
                                          "##", "#$", "####", "## Heading", "$#$%", "café", "naïve", "Ünïcödé",
                                          "<|endoftext|>", "abc123def", "3.14159", "x86_64", "C++", "e.g.", "   "};
  const std::vector<std::function<std::string()>> pieces = {
      [&] { return run_of(pick(1, 8), from(0x4E00, 0x9FFF)) + (pick(0, 1) ? "。" : "、"); },  // CJK
      [&] { return run_of(pick(1, 8), from(0x3041, 0x3096)) + run_of(pick(0, 4), from(0x30A1, 0x30FA)); },  // kana
      [&] { return run_of(pick(1, 4), from(0xAC00, 0xD7A3)) + " "; },                                    // Hangul
      [&] {  // Latin letters, each with up to three combining marks
        return run_of(pick(1, 6), [&] { return std::string(1, static_cast<char>(pick('a', 'z'))) + run_of(pick(0, 3), from(0x300, 0x36F)); });
      },
      [&] { return run_of(pick(1, 4), from(0x1F600, 0x1F64F)) + utf8_encode(0x200D) + utf8_encode(pick(0x1F300, 0x1F5FF)); },  // emoji, ZWJ
      [&] { return utf8_encode(pick(0x1F466, 0x1F469)) + utf8_encode(pick(0x1F3FB, 0x1F3FF)) + utf8_encode(0xFE0F); },  // skin tone, VS16
      [&] { return utf8_encode(pick(0x1F1E6, 0x1F1FF)) + utf8_encode(pick(0x1F1E6, 0x1F1FF)); },                  // a flag
      [&] { return utf8_encode(0x200F) + run_of(pick(2, 6), from(0x5D0, 0x5EA)) + " "; },                  // Hebrew, RLM
      [&] { return run_of(pick(2, 6), from(0x641, 0x64A)) + run_of(pick(1, 3), from(0x660, 0x669)); },  // Arabic, its digits
      [&] { return run_of(pick(1, 5), from(0x3B1, 0x3C9)) + " " + run_of(pick(1, 5), from(0x410, 0x44F)); },  // Greek, Cyrillic
      [&] {  // numbers: superscripts, fractions, Roman numerals, circled and full-width digits
        const uint32_t n[] = {0xB2, 0xB3, 0xB9, 0xBC, 0xBD, 0x2160, 0x2165, 0x2460, 0x2473, 0xFF10, 0xFF19, '7'};
        return run_of(pick(1, 4), [&] { return utf8_encode(n[pick(0, 11)]); });
      },
      [&] { return run_of(pick(1, 3), [&] { return std::string(1, static_cast<char>(pick(0, 31))); }); },  // C0, NUL
      [&] { return utf8_encode(pick(0x80, 0x9F)) + std::string(1, '\x7F'); },                                  // C1, DEL
      [&] { return std::string(pick(1, 3000), ' ') + (pick(0, 1) ? "x" : "\n"); },                     // long runs of spaces
      [&] { return std::string(pick(1, 40), '\t') + std::string(pick(0, 3), '\n') + std::string(pick(0, 9), ' '); },
      [&] {  // Unicode spaces (\s in JavaScript) and look-alikes that are not (ZWSP, NEL, Mongolian separator)
        const uint32_t s[] = {0xA0, 0x1680, 0x2000, 0x2005, 0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000, 0xFEFF, 0x200B, 0x85, 0x180E};
        return run_of(pick(1, 4), [&] { return utf8_encode(s[pick(0, 13)]); }) + (pick(0, 1) ? "word" : " ");
      },
      [&] { return run_of(pick(1, 500), [&] { return std::string(1, punctuation[pick(0, 31)]); }); },  // punctuation runs
      [&] { return std::string(pick(1, 200), punctuation[pick(0, 31)]); },                              // one mark repeated
      [&] { return " " + words[pick(0, static_cast<uint32_t>(words.size() - 1))]; },
      [&] { return std::string(pick(0, 1) ? "\n" : " "); },
  };
  std::string text;
  while (text.size() < bytes) text += pieces[pick(0, static_cast<uint32_t>(pieces.size() - 1))]();
  return text;
}

Corpus machine_corpus() {
  Corpus c;
  const auto all = [](const fs::path&) { return true; };
  const auto plain = [](const fs::path& p) { return p.extension() != ".dat" && p.extension() != ".u8"; };
  const auto ext = [](const char* e) { return [e](const fs::path& p) { return p.extension() == e; }; };
  const auto zcat = [](const std::string& p) { return run("zcat '" + p + "' 2>/dev/null"); };
  c.add_files("fortunes", "/usr/share/games/fortunes", plain, read_file, 1'500'000);
  c.add_files("python", python_stdlib(), ext(".py"), read_file, 1'400'000);
  c.add_files("c", "/usr/include", ext(".h"), read_file, 1'000'000);
  c.add_files("man", "/usr/share/man/man1", all, zcat, 1'000'000);
  c.add("torture", torture_text(400'000));
  return c;
}

std::vector<std::vector<int>> reference_ids(const Corpus& corpus, const std::string& dir) {
  const std::string in = dir + "/units.jsonl", out = dir + "/ids.jsonl";
  {
    std::ofstream f(in, std::ios::binary);
    for (const std::string& u : corpus.units) f << nlohmann::json(u).dump() << "\n";
  }
  const std::string script = std::string(std::getenv("RATIO_SOURCE_DIR")) + "/tests/worker/gpt2_reference.js";
  const std::string cmd = "node '" + script + "' '" + ratio::worker::default_gpt2_vocab_dir() + "' '" + in + "' '" + out + "'";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::vector<std::vector<int>> ids;
  std::ifstream f(out);
  for (std::string line; std::getline(f, line);) ids.push_back(nlohmann::json::parse(line).get<std::vector<int>>());
  return ids;
}

std::string shown(const std::string& s) { return nlohmann::json(s).dump(); }

}  // namespace

TEST(Gpt2Reference, MegabytesOfMachineTextTokenForToken) {
  if (std::system("command -v node >/dev/null 2>&1") != 0) GTEST_SKIP() << "node is not installed (scripts/setup.sh installs it)";
  ASSERT_NE(std::getenv("RATIO_SOURCE_DIR"), nullptr);
  const Corpus corpus = machine_corpus();
  std::string summary;
  for (const auto& [kind, n] : corpus.bytes) summary += " " + kind + "=" + std::to_string(n);
  ASSERT_GE(corpus.total, 5'000'000u) << "not enough text on this machine:" << summary;
  std::cout << "corpus: " << corpus.total << " bytes in " << corpus.units.size() << " texts:" << summary << "\n";

  const fs::path dir = fs::temp_directory_path() / ("ratio_gpt2_reference_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::vector<std::vector<int>> expected = reference_ids(corpus, dir.string());
  fs::remove_all(dir);
  ASSERT_EQ(expected.size(), corpus.units.size());

  static const Gpt2Tokenizer tok(ratio::worker::default_gpt2_vocab_dir());
  ratio::worker::EncodeCache cache;
  size_t tokens = 0, differing = 0;
  for (size_t u = 0; u < corpus.units.size(); ++u) {
    std::vector<uint16_t> got;
    tok.encode(corpus.units[u], got, cache);
    tokens += got.size();
    const std::vector<int> ours(got.begin(), got.end());
    if (ours == expected[u]) continue;
    if (differing++ < 5) {
      size_t k = 0;
      while (k < ours.size() && k < expected[u].size() && ours[k] == expected[u][k]) ++k;
      const std::vector<uint16_t> around(got.begin() + std::max<size_t>(k, 3) - 3, got.begin() + std::min(k + 3, got.size()));
      ADD_FAILURE() << corpus.kinds[u] << " text " << u << ": first difference at token " << k << " (ours "
                    << (k < ours.size() ? ours[k] : -1) << ", gpt-3-encoder " << (k < expected[u].size() ? expected[u][k] : -1)
                    << ") in " << shown(tok.decode(around));
    }
  }
  EXPECT_EQ(differing, 0u) << "of " << corpus.units.size() << " texts differ";
  std::cout << "compared " << tokens << " tokens\n";
}
