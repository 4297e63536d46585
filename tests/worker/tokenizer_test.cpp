// GPT-2 BPE ids against the npm gpt-3-encoder reference (values produced by its encode()), and the
// byte tokenizer.
#include <gtest/gtest.h>

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

TEST(ByteTokenizer, OneTokenPerByte) {
  ByteTokenizer tok;
  EXPECT_EQ(tok.vocab_size(), 256);
  EXPECT_EQ(tok.encode("A\xC3\xA9"), ids({65, 0xC3, 0xA9}));
}
