// Shards, datasets and the seeded batch order, on real files in a temp folder.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <sys/wait.h>
#include <unistd.h>

#include "worker/data.h"
#include "worker/prepare.h"

namespace fs = std::filesystem;
using namespace ratio::worker;

namespace {

class DataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("ratio_data_test_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  void write_bytes(const std::string& name, const std::string& bytes) const {
    std::ofstream(path(name), std::ios::binary) << bytes;
  }
  fs::path dir_;
};

std::vector<uint16_t> ramp(int n, int mod) {
  std::vector<uint16_t> v(n);
  for (int i = 0; i < n; ++i) v[i] = static_cast<uint16_t>(i % mod);
  return v;
}

}  // namespace

TEST_F(DataTest, LlmcShardRoundTrip) {
  const std::vector<uint16_t> tokens = ramp(5000, 50257);
  write_shard(path("a.bin"), tokens);
  EXPECT_EQ(fs::file_size(path("a.bin")), 1024u + 2u * 5000u);
  MappedShard shard(path("a.bin"));
  ASSERT_EQ(shard.size(), 5000);
  EXPECT_TRUE(std::equal(tokens.begin(), tokens.end(), shard.tokens()));
  EXPECT_FALSE(fs::exists(path("a.bin.tmp")));
}

TEST_F(DataTest, RawNanoGptShard) {
  const std::vector<uint16_t> tokens = ramp(300, 1000);
  write_bytes("train.bin", std::string(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 2));
  MappedShard shard(path("train.bin"));
  ASSERT_EQ(shard.size(), 300);
  EXPECT_EQ(shard.tokens()[299], 299);
}

TEST_F(DataTest, TruncatedLlmcShardIsCorrupt) {
  write_shard(path("a.bin"), ramp(1000, 256));
  fs::resize_file(path("a.bin"), 1024 + 2 * 900);
  try {
    MappedShard shard(path("a.bin"));
    FAIL();
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("header says 1000 tokens, file holds 900"), std::string::npos) << e.what();
  }
}

TEST_F(DataTest, OddRawShardAndMissingShardAreErrors) {
  write_bytes("train.bin", "abc");
  EXPECT_THROW(MappedShard{path("train.bin")}, DataError);
  EXPECT_THROW(MappedShard{path("nope.bin")}, DataError);
}

TEST_F(DataTest, TrainOrderDependsOnSeedAndPositionValidationOnPositionOnly) {
  write_shard(path("train.bin"), ramp(10000, 256));
  TokenSplit split({path("train.bin")}, 17);
  BatchOrder a{1337}, b{1337}, other{7};
  EXPECT_EQ(a.train_draws(5, 2, 4), b.train_draws(5, 2, 4));
  EXPECT_NE(a.train_draws(5, 2, 4), a.train_draws(6, 2, 4));
  EXPECT_NE(a.train_draws(5, 2, 4), a.train_draws(5, 3, 4));
  EXPECT_NE(a.train_draws(5, 2, 4), other.train_draws(5, 2, 4));
  EXPECT_EQ(a.val_draws(3, 4), b.val_draws(3, 4));
  EXPECT_NE(a.val_draws(3, 4), a.train_draws(3, 0, 4));
  // Seeds change the training data order, never the validation batches every job is judged on.
  EXPECT_EQ(a.val_draws(3, 4), other.val_draws(3, 4));
  EXPECT_NE(a.val_draws(3, 4), a.val_draws(4, 4));

  std::vector<int64_t> x1(4 * 16), y1(4 * 16), x2(4 * 16), y2(4 * 16);
  split.fill(a.train_draws(5, 2, 4), 4, 16, 256, x1.data(), y1.data());
  split.fill(b.train_draws(5, 2, 4), 4, 16, 256, x2.data(), y2.data());
  EXPECT_EQ(x1, x2);
  EXPECT_EQ(y1, y2);
  for (int r = 0; r < 4; ++r)
    for (int t = 0; t < 16; ++t) EXPECT_EQ(y1[r * 16 + t], (x1[r * 16 + t] + 1) % 256);  // targets shifted by one
}

TEST_F(DataTest, WindowsNeverCrossShards) {
  write_shard(path("x_train_000.bin"), std::vector<uint16_t>(40, 1));
  write_shard(path("x_train_001.bin"), std::vector<uint16_t>(40, 2));
  TokenSplit split({path("x_train_000.bin"), path("x_train_001.bin")}, 33);
  BatchOrder order{1};
  std::vector<int64_t> x(64 * 32), y(64 * 32);
  split.fill(order.train_draws(0, 0, 64), 64, 32, 256, x.data(), y.data());
  int seen[3] = {0, 0, 0};
  for (int r = 0; r < 64; ++r) {
    for (int t = 0; t < 32; ++t) ASSERT_EQ(x[r * 32 + t], x[r * 32]) << "row " << r << " mixes shards";
    seen[x[r * 32]]++;
  }
  EXPECT_GT(seen[1], 0);
  EXPECT_GT(seen[2], 0);
}

// llm.c's last shard may be shorter than a window: it gives no windows, the others still do.
TEST_F(DataTest, ShardShorterThanAWindowGivesNoWindows) {
  write_shard(path("x_train_000001.bin"), std::vector<uint16_t>(100, 1));
  write_shard(path("x_train_000002.bin"), std::vector<uint16_t>(5, 2));
  TokenSplit split({path("x_train_000001.bin"), path("x_train_000002.bin")}, 17);
  EXPECT_EQ(split.tokens(), 105);
  std::vector<int64_t> x(256 * 16), y(256 * 16);
  split.fill(BatchOrder{1}.train_draws(0, 0, 256), 256, 16, 256, x.data(), y.data());
  for (int64_t v : x) ASSERT_EQ(v, 1);
}

TEST_F(DataTest, TokenBeyondVocabIsDataError) {
  write_shard(path("train.bin"), std::vector<uint16_t>(100, 300));
  TokenSplit split({path("train.bin")}, 9);
  std::vector<int64_t> x(8), y(8);
  EXPECT_THROW(split.fill(BatchOrder{1}.train_draws(0, 0, 1), 1, 8, 256, x.data(), y.data()), DataError);
}

TEST_F(DataTest, ShardShorterThanAWindowIsDataError) {
  write_shard(path("train.bin"), std::vector<uint16_t>(10, 1));
  EXPECT_THROW(TokenSplit({path("train.bin")}, 129), DataError);
}

// The presets name their corpus ("fineweb-edu"): a bare name is a folder under --data-dir.
TEST_F(DataTest, DatasetNameResolvesUnderTheDataDir) {
  write_bytes("in.txt", std::string(4000, 'a') + std::string(4000, 'b'));
  prepare_corpus({path("in.txt"), path("cache/my-corpus"), "byte"}, nullptr);
  DatasetFiles by_name = resolve_dataset("my-corpus", "byte", path("cache"));
  DatasetFiles by_path = resolve_dataset(path("cache/my-corpus"), "byte", path("elsewhere"));
  EXPECT_EQ(by_name.train, by_path.train);
  EXPECT_EQ(by_name.val, by_path.val);
  EXPECT_THROW(resolve_dataset("my-corpus", "byte", path("elsewhere")), DataError);
}

TEST_F(DataTest, FortunesPreparedOnceEvenWithConcurrentWorkers) {
  fs::create_directories(path("fortunes"));
  std::string corpus;
  for (int i = 0; i < 50; ++i) corpus += "Fortune number " + std::to_string(i) + ".\n%\n";
  write_bytes("fortunes/tiny", corpus);
  write_bytes("fortunes/tiny.dat", std::string(64, '\xff'));  // index files are skipped
  ::setenv("RATIO_FORTUNES_DIR", path("fortunes").c_str(), 1);

  std::vector<pid_t> children;
  for (int k = 0; k < 4; ++k) {
    pid_t pid = ::fork();
    if (pid == 0) {
      try {
        resolve_dataset("fortunes", "byte", path("cache"));
        ::_exit(0);
      } catch (...) {
        ::_exit(1);
      }
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  ::unsetenv("RATIO_FORTUNES_DIR");
  DatasetFiles files = resolve_dataset("fortunes", "byte", path("cache"));
  MappedShard train(files.train[0]), val(files.val[0]);
  const std::string val_text(val.tokens(), val.tokens() + val.size());
  // Every tenth fortune is validation; each fortune ends with a blank line instead of "%".
  EXPECT_EQ(val_text, "Fortune number 9.\n\nFortune number 19.\n\nFortune number 29.\n\nFortune number 39.\n\nFortune number 49.\n\n");
  EXPECT_EQ(train.size() + val.size(), static_cast<int64_t>(corpus.size() - 50));
  int leftovers = 0;
  for (const auto& e : fs::directory_iterator(path("cache"))) leftovers += e.path().filename().string()[0] == '.';
  EXPECT_EQ(leftovers, 0);
}
