// `ratio-worker prepare` on real files in a temp folder: the three input kinds, <|endoftext|>
// between documents, the val split, numbered shards, thread-count independence, streaming cuts, errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "worker/data.h"
#include "worker/prepare.h"
#include "worker/tokenizer.h"

namespace fs = std::filesystem;
using namespace ratio::worker;

namespace {

constexpr uint16_t kEot = 50256;

class PrepareTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("ratio_prepare_test_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  void write(const std::string& name, const std::string& bytes) const {
    fs::create_directories(fs::path(path(name)).parent_path());
    std::ofstream(path(name), std::ios::binary) << bytes;
  }
  fs::path dir_;
};

const Gpt2Tokenizer& gpt2() {
  static Gpt2Tokenizer tok(default_gpt2_vocab_dir());
  return tok;
}

// Every token of a split, its shards in order.
std::vector<uint16_t> tokens_of(const std::vector<std::string>& shards) {
  std::vector<uint16_t> all;
  for (const std::string& p : shards) {
    MappedShard s(p);
    all.insert(all.end(), s.tokens(), s.tokens() + s.size());
  }
  return all;
}

std::vector<uint16_t> with_eot(const std::string& text) {
  std::vector<uint16_t> ids = {kEot};
  const std::vector<uint16_t> body = gpt2().encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

// Varied text: prose, code-like lines, CJK, long runs without a place to cut, and (unless it is for
// JSON, which must be UTF-8) bytes that are not UTF-8.
std::string varied_text(size_t bytes, bool invalid_utf8 = true) {
  std::mt19937 rng(5);
  const std::vector<std::string> pieces = {"The quick brown fox, ", "jumps over the lazy dog. ", "it's 42\n", "    return x;\n",
                                           "## Heading\n\n", "\xE6\x97\xA5\xE6\x9C\xAC\xE3\x80\x82", "   ", "\t\t", "!!!",
                                           "\xF0\x9F\x99\x82", std::string(3000, 'a'), "\xFF\xFE", "\n\n\n"};
  std::string text;
  while (text.size() < bytes) {
    const std::string& piece = pieces[std::uniform_int_distribution<size_t>(0, pieces.size() - 1)(rng)];
    if (invalid_utf8 || piece != "\xFF\xFE") text += piece;
  }
  return text;
}

}  // namespace

// One text file is one document; as nanoGPT does, its last val_frac is val. Byte shards hold the file.
TEST_F(PrepareTest, OneTextFileSplitsItsTailToVal) {
  std::string text;
  for (int i = 0; i < 200; ++i) text += "line " + std::to_string(i) + "\n";
  write("in.txt", text);
  const PrepareStats stats = prepare_corpus({path("in.txt"), path("out"), "byte"}, nullptr);
  EXPECT_EQ(stats.documents, 1);
  EXPECT_EQ(stats.val_tokens, static_cast<int64_t>(text.size() * 0.1));
  EXPECT_EQ(stats.train_tokens + stats.val_tokens, static_cast<int64_t>(text.size()));
  EXPECT_TRUE(fs::exists(path("out/out_train_000001.bin")));
  EXPECT_TRUE(fs::exists(path("out/out_val_000001.bin")));
  const DatasetFiles files = resolve_dataset(path("out"), "byte", path("cache"));
  EXPECT_EQ(files.tokenizer, "byte");
  const std::vector<uint16_t> train = tokens_of(files.train), val = tokens_of(files.val);
  EXPECT_EQ(std::string(train.begin(), train.end()) + std::string(val.begin(), val.end()), text);
  EXPECT_THROW(resolve_dataset(path("out"), "gpt2", path("cache")), DataError);
}

// GPT-2: the val tail starts where the tokenizer may cut, so train + val is the file's encoding.
TEST_F(PrepareTest, OneTextFileGpt2TokensEqualTheWholeFile) {
  const std::string text = varied_text(300'000);
  write("in.txt", text);
  prepare_corpus({path("in.txt"), path("out"), "gpt2"}, nullptr);
  const DatasetFiles files = find_dataset(path("out"));
  std::vector<uint16_t> all = tokens_of(files.train);
  const std::vector<uint16_t> val = tokens_of(files.val);
  EXPECT_NEAR(static_cast<double>(gpt2().decode(val).size()), text.size() * 0.1, 10000.0);
  all.insert(all.end(), val.begin(), val.end());
  EXPECT_EQ(all, with_eot(text));
}

// JSONL: each line's "text" is a document, <|endoftext|> before each (nanoGPT, llm.c); every tenth
// document is val.
TEST_F(PrepareTest, JsonlDocumentsAreSeparatedAndSplitByDocument) {
  std::string jsonl;
  std::vector<uint16_t> train_expected, val_expected;
  for (int i = 0; i < 30; ++i) {
    const std::string doc = "Document " + std::to_string(i) + " says \"hi\"\n\twith \xC3\xA9t\xC3\xA9 ##";
    jsonl += nlohmann::json({{"id", i}, {"text", doc}}).dump() + "\n";
    const std::vector<uint16_t> ids = with_eot(doc);
    auto& split = i % 10 == 9 ? val_expected : train_expected;
    split.insert(split.end(), ids.begin(), ids.end());
  }
  write("corpus.jsonl", jsonl + "\n");  // a trailing blank line is no document
  const PrepareStats stats = prepare_corpus({path("corpus.jsonl"), path("fw"), "gpt2"}, nullptr);
  EXPECT_EQ(stats.documents, 30);
  const DatasetFiles files = resolve_dataset(path("fw"), "gpt2", path("cache"));
  EXPECT_EQ(files.train, std::vector<std::string>{path("fw/fw_train_000001.bin")});
  EXPECT_EQ(tokens_of(files.train), train_expected);
  EXPECT_EQ(tokens_of(files.val), val_expected);
}

// A folder: every file (recursively, sorted, hidden ones skipped) is a document; .jsonl files in it
// hold one document per line.
TEST_F(PrepareTest, FolderOfTextAndJsonlFiles) {
  std::vector<uint16_t> expected;
  for (int i = 0; i < 10; ++i) {
    const std::string name = "docs/" + std::string(i < 5 ? "a/" : "b/") + std::to_string(i) + ".txt";
    write(name, "file " + std::to_string(i) + "\n");
  }
  write("docs/c.jsonl", "{\"text\": \"line one\"}\n{\"text\": \"line two\"}\n");
  write("docs/.hidden", "never read");
  const PrepareStats stats = prepare_corpus({path("docs"), path("out"), "gpt2"}, nullptr);
  EXPECT_EQ(stats.documents, 12);
  for (const std::string doc : {"file 0\n", "file 1\n", "file 2\n", "file 3\n", "file 4\n", "file 5\n", "file 6\n",
                                 "file 7\n", "file 8\n", "line one", "line two"}) {
    const std::vector<uint16_t> ids = with_eot(doc);
    expected.insert(expected.end(), ids.begin(), ids.end());
  }
  const DatasetFiles files = find_dataset(path("out"));
  EXPECT_EQ(tokens_of(files.train), expected);
  EXPECT_EQ(tokens_of(files.val), with_eot("file 9\n"));  // the tenth document in path order
}

// The shards do not depend on the thread count or shard size; a document longer than the read
// block is cut where the tokenizer allows, so its tokens equal the whole document's.
TEST_F(PrepareTest, ThreadsShardSizeAndStreamingDoNotChangeTokens) {
  const std::string long_doc = varied_text(2'500'000);
  std::string jsonl;
  for (int i = 0; i < 40; ++i) jsonl += nlohmann::json({{"text", varied_text(1000 + 500 * i, false)}}).dump() + "\n";
  write("corpus/a.txt", long_doc);
  write("corpus/b.jsonl", jsonl);

  PrepareOptions one{path("corpus"), path("one"), "gpt2"};
  one.threads = 1;
  PrepareOptions many{path("corpus"), path("many"), "gpt2"};
  many.threads = 4;
  many.shard_tokens = 100'000;
  const PrepareStats a = prepare_corpus(one, nullptr), b = prepare_corpus(many, nullptr);
  EXPECT_EQ(a.train_shards, 1);
  EXPECT_GT(b.train_shards, 5);
  const DatasetFiles fa = find_dataset(path("one")), fb = find_dataset(path("many"));
  const std::vector<uint16_t> train = tokens_of(fa.train);
  EXPECT_EQ(train, tokens_of(fb.train));
  EXPECT_EQ(tokens_of(fa.val), tokens_of(fb.val));
  for (size_t k = 0; k + 1 < fb.train.size(); ++k) EXPECT_EQ(MappedShard(fb.train[k]).size(), 100'000);
  const std::vector<uint16_t> first = with_eot(long_doc);
  ASSERT_GE(train.size(), first.size());
  EXPECT_TRUE(std::equal(first.begin(), first.end(), train.begin())) << "a.txt (document 0) encoded in parts";
  EXPECT_EQ(train[first.size()], kEot);
}

// Text with nowhere to cut for longer than the 1 MB read block is read on until there is one.
TEST_F(PrepareTest, StretchWithoutACutLongerThanTheReadBlock) {
  std::string text;
  for (int i = 0; i < 1'500'000; ++i) text += "a ";
  text += "end.";
  for (int i = 0; i < 5000; ++i) text += " b" + std::to_string(i) + ".";
  write("docs/one.txt", text);
  write("docs/two.txt", "second");
  for (int i = 0; i < 8; ++i) write("docs/x" + std::to_string(i) + ".txt", "more");
  prepare_corpus({path("docs"), path("out"), "gpt2"}, nullptr);
  const std::vector<uint16_t> train = tokens_of(find_dataset(path("out")).train), first = with_eot(text);
  ASSERT_GT(train.size(), first.size());
  EXPECT_TRUE(std::equal(first.begin(), first.end(), train.begin()));
}

TEST_F(PrepareTest, BadJsonlLinesNameFileAndLine) {
  write("bad.jsonl", "{\"text\": \"ok\"}\n{\"text\": oops}\n");
  try {
    prepare_corpus({path("bad.jsonl"), path("out"), "gpt2"}, nullptr);
    FAIL() << "expected a DataError";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(path("bad.jsonl") + ":2 is not JSON"), std::string::npos) << e.what();
  }
  write("notext.jsonl", "{\"content\": \"ok\"}\n");
  try {
    prepare_corpus({path("notext.jsonl"), path("out2"), "gpt2"}, nullptr);
    FAIL() << "expected a DataError";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(":1 has no string field \"text\""), std::string::npos) << e.what();
  }
  EXPECT_TRUE(fs::is_empty(path("out"))) << "no partial shards left behind";
}

TEST_F(PrepareTest, TooFewDocumentsForValIsAnErrorThatLeavesNothing) {
  write("three.jsonl", "{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"text\": \"c\"}\n");
  try {
    prepare_corpus({path("three.jsonl"), path("out"), "gpt2"}, nullptr);
    FAIL() << "expected a DataError";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("has 3 documents, which gave 6 train and 0 val tokens"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(fs::is_empty(path("out")));
}

TEST_F(PrepareTest, RefusesAPreparedFolderAndBadOptions) {
  write("in.txt", std::string(1000, 'x'));
  prepare_corpus({path("in.txt"), path("out"), "byte"}, nullptr);
  EXPECT_THROW(prepare_corpus({path("in.txt"), path("out"), "byte"}, nullptr), DataError);
  EXPECT_THROW(prepare_corpus({path("missing.txt"), path("out2"), "byte"}, nullptr), DataError);
  EXPECT_THROW(prepare_corpus({path("in.txt"), path("out3"), "byte", 1.5}, nullptr), std::invalid_argument);
  EXPECT_THROW(prepare_corpus({path("in.txt"), path("out4"), "bpe"}, nullptr), std::invalid_argument);
  write("packed/part-0.jsonl.gz", "\x1f\x8b");
  try {
    prepare_corpus({path("packed"), path("out5"), "gpt2"}, nullptr);
    FAIL() << "expected a DataError";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("part-0.jsonl.gz is compressed or columnar"), std::string::npos) << e.what();
  }
}

TEST_F(PrepareTest, ProgressReportsRateTokensAndEta) {
  write("in.txt", std::string(5000, 'x'));
  std::ostringstream progress;
  prepare_corpus({path("in.txt"), path("out"), "byte"}, &progress);
  EXPECT_NE(progress.str().find("prepare: 0.0/0.0 MB (100%)"), std::string::npos) << progress.str();
  EXPECT_NE(progress.str().find("MB/s, 0.0M tokens, ETA 0 s"), std::string::npos) << progress.str();
}
