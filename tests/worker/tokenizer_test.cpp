// GPT-2 BPE ids against the npm gpt-3-encoder reference (values produced by its encode()), the
// round trip of any bytes, the places prepare may cut a text, and the byte tokenizer. The
// megabyte-scale comparison with gpt-3-encoder is gpt2_reference_test.cpp.
#include <gtest/gtest.h>

#include <random>

#include "worker/tokenizer.h"

using ratio::worker::ByteTokenizer;
using ratio::worker::Gpt2Tokenizer;

namespace {

const Gpt2Tokenizer& gpt2() {
  static Gpt2Tokenizer tok(ratio::worker::default_gpt2_vocab_dir());
  return tok;
}

std::vector<uint16_t> ids(std::initializer_list<int> v) { return {v.begin(), v.end()}; }

}  // namespace

TEST(Gpt2Tokenizer, VocabularyIsGpt2) { EXPECT_EQ(gpt2().vocab_size(), 50257); }

TEST(Gpt2Tokenizer, KnownEncodings) {
  EXPECT_EQ(gpt2().encode("Hello world"), ids({15496, 995}));
  EXPECT_EQ(gpt2().encode(" the"), ids({262}));
  EXPECT_EQ(gpt2().encode("123 4567 3.14"), ids({10163, 4153, 3134, 513, 13, 1415}));
}

TEST(Gpt2Tokenizer, Contractions) {
  EXPECT_EQ(gpt2().encode("I'm don't they'll we've"), ids({40, 1101, 836, 470, 484, 1183, 356, 1053}));
}

TEST(Gpt2Tokenizer, WhitespaceRuns) {
  // "\s+(?!\S)": of two spaces before a word, the last one joins the word.
  EXPECT_EQ(gpt2().encode("  two  spaces\n\nnew"), ids({220, 734, 220, 9029, 198, 198, 3605}));
}

TEST(Gpt2Tokenizer, Unicode) {
  EXPECT_EQ(gpt2().encode("h\xC3\xA9llo w\xC3\xB6rld caf\xC3\xA9"), ids({71, 2634, 18798, 266, 30570, 335, 40304}));
  EXPECT_EQ(gpt2().encode("\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E"), ids({33768, 98, 17312, 105, 45739, 252}));  // 日本語
  EXPECT_EQ(gpt2().encode("emoji \xF0\x9F\x99\x82!"), ids({368, 31370, 32485, 0}));
  EXPECT_EQ(gpt2().encode("\xC3\x9Cn\xC3\xAF" "c\xC3\xB6" "d\xC3\xA9 na\xC3\xAFve r\xC3\xA9sum\xC3\xA9"),
            ids({127, 250, 77, 26884, 66, 9101, 67, 2634, 41492, 40560, 16345, 2634}));
}

TEST(Gpt2Tokenizer, EndOfTextIsPlainText) {
  EXPECT_EQ(gpt2().encode("<|endoftext|>"), ids({27, 91, 437, 1659, 5239, 91, 29}));
}

// The eight merges of vocab.bpe whose lines start with '#' (only the first line is a header).
struct HashMerge {
  const char* name;
  std::string text;
  std::vector<uint16_t> ids;
};

class Gpt2HashMerge : public ::testing::TestWithParam<HashMerge> {};

TEST_P(Gpt2HashMerge, IsApplied) { EXPECT_EQ(gpt2().encode(GetParam().text), GetParam().ids) << GetParam().text; }

INSTANTIATE_TEST_SUITE_P(
    VocabBpe, Gpt2HashMerge,
    ::testing::Values(HashMerge{"hash_hash", "##", {2235}}, HashMerge{"hash2_hash2", "####", {4242}},
                      HashMerge{"hash4_hash4", "########", {7804}}, HashMerge{"hash8_hash8", std::string(16, '#'), {14468}},
                      HashMerge{"hash2_hash", "###", {21017}}, HashMerge{"hash16_hash16", std::string(32, '#'), {29113}},
                      HashMerge{"hash_dollar", "#$", {29953}}, HashMerge{"hashdollar_hashdollar", "#$#$", {34206}},
                      HashMerge{"markdown_heading", "## Heading", {2235, 679, 4980}},
                      HashMerge{"issue_17_first_difference", "$#$%", {3, 29953, 4}}),
    [](const ::testing::TestParamInfo<HashMerge>& info) { return std::string(info.param.name); });

TEST(Gpt2Tokenizer, UnicodeNumbersAndSpaces) {
  // \p{N} is every number (superscripts, fractions, Roman numerals, Arabic-Indic digits), \s is
  // JavaScript's (NBSP, ideographic space), and the zero-width space is neither.
  EXPECT_EQ(gpt2().encode("x\xC2\xB2 \xC2\xBD \xE2\x85\xAB \xD9\xA3\xD9\xA4 a\xC2\xA0" "b\xE3\x80\x80" "c\xE2\x80\x8B" "d"),
            ids({87, 31185, 25208, 2343, 227, 104, 18923, 96, 149, 97, 257, 1849, 65, 5099, 222, 66, 9525, 67}));
}

TEST(Gpt2Tokenizer, SplitKeepsEveryByte) {
  const std::string text = "It's 42\t degrees\n\n  outside!! \xC3\xA9t\xC3\xA9  ";
  std::string joined;
  for (const auto& p : Gpt2Tokenizer::split(text)) joined += p;
  EXPECT_EQ(joined, text);
}

TEST(Gpt2Tokenizer, MissingVocabularyNamesTheFile) {
  try {
    Gpt2Tokenizer tok("/nonexistent/vocab");
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/vocab/encoder.json"), std::string::npos) << e.what();
  }
}

// Bytes that are not UTF-8 (stray continuation bytes, overlong forms, surrogates, truncated
// sequences), control characters, NUL and emoji all come back from decode(encode(x)).
TEST(Gpt2Tokenizer, DecodeInvertsEncodeOnAnyBytes) {
  const std::vector<std::string> texts = {
      std::string("nul\0inside\x01\x1F\x7F", 14), "\x80\xBF stray", "\xC0\xAF overlong", "\xED\xA0\x80 surrogate",
      "\xF4\x90\x80\x80 past U+10FFFF", "truncated \xE6\x97", "\xF0\x9F\x99\x82\xE2\x80\x8D\xF0\x9F\x94\xA5 emoji",
      "\xFF\xFE\xFD", "\xE2\x80\xA8\xE2\x80\xA9\xC2\x85\xC2\xA0 line separators"};
  for (const std::string& t : texts) EXPECT_EQ(gpt2().decode(gpt2().encode(t)), t) << t;
  std::mt19937 rng(3);
  for (int k = 0; k < 200; ++k) {
    std::string random_bytes(std::uniform_int_distribution<int>(0, 64)(rng), '\0');
    for (char& c : random_bytes) c = static_cast<char>(std::uniform_int_distribution<int>(0, 255)(rng));
    ASSERT_EQ(gpt2().decode(gpt2().encode(random_bytes)), random_bytes);
  }
}

// Where can_split_at allows a cut, the two halves encode to the tokens of the whole (what lets
// prepare stream a document longer than memory).
TEST(Gpt2Tokenizer, CutsAllowedByCanSplitAtKeepTheTokens) {
  const std::string alphabet[] = {"a", "Z", "7", " ", "  ", "\n", "'", "'s", "'re", ".", "#", "$", "\xC3\xA9", "\xE6\x97\xA5",
                                  "\xD9\xA3", "\xC2\xB2", "\xF0\x9F\x99\x82", "\xE3\x80\x82", "\xC2\xA0", "\xFF", "\t"};
  std::mt19937 rng(11);
  int cuts = 0;
  for (int k = 0; k < 300; ++k) {
    std::string text;
    for (int n = 0; n < 40; ++n) text += alphabet[std::uniform_int_distribution<int>(0, 20)(rng)];
    const std::vector<uint16_t> whole = gpt2().encode(text);
    for (size_t p = 0; p <= text.size(); ++p) {
      if (!gpt2().can_split_at(text, p)) continue;
      ++cuts;
      std::vector<uint16_t> halves = gpt2().encode(text.substr(0, p));
      const std::vector<uint16_t> rest = gpt2().encode(text.substr(p));
      halves.insert(halves.end(), rest.begin(), rest.end());
      ASSERT_EQ(halves, whole) << "cut at " << p << " of " << text;
    }
  }
  EXPECT_GT(cuts, 1000);
  EXPECT_FALSE(gpt2().can_split_at("it's", 3)) << "inside a contraction";
  EXPECT_FALSE(gpt2().can_split_at("ab", 1)) << "inside a run of letters";
  EXPECT_FALSE(gpt2().can_split_at("a b", 1)) << "before a space";
  EXPECT_TRUE(gpt2().can_split_at("word.", 4));
  EXPECT_TRUE(gpt2().can_split_at("\xE6\x97\xA5\xE3\x80\x82", 3)) << "between a CJK letter and its full stop";
}

TEST(ByteTokenizer, OneTokenPerByte) {
  ByteTokenizer tok;
  EXPECT_EQ(tok.vocab_size(), 256);
  EXPECT_EQ(tok.encode("A\xC3\xA9"), ids({65, 0xC3, 0xA9}));
  EXPECT_EQ(tok.decode(ids({65, 0, 0xFF})), std::string("A\0\xFF", 3));
  EXPECT_EQ(tok.end_of_text(), -1);
}
