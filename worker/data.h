#pragma once
// Token data: shards on disk (memory-mapped), the built-in "fortunes" corpus, and the seeded batch
// order (preparing shards from a corpus is worker/prepare.h). No LibTorch here: batches are filled into int64 buffers
// that the trainer wraps as tensors.
//
// Two shard formats are read:
//   nanoGPT: raw little-endian uint16 tokens (train.bin, val.bin);
//   llm.c:   a header of 256 int32 (magic 20240520, version 1, token count) then uint16 tokens.
// Shards written here use the llm.c format, so truncation is detectable.

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace ratio::worker {

// Missing, corrupt or mismatched data (exit code 3). The message says which file and how to fix it.
class DataError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

constexpr int32_t kLlmcMagic = 20240520;
constexpr int kLlmcHeaderInts = 256;

// One read-only memory-mapped shard.
class MappedShard {
 public:
  explicit MappedShard(const std::string& path);  // throws DataError
  ~MappedShard();
  MappedShard(const MappedShard&) = delete;
  MappedShard& operator=(const MappedShard&) = delete;

  const uint16_t* tokens() const { return tokens_; }
  int64_t size() const { return count_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const uint16_t* tokens_ = nullptr;
  int64_t count_ = 0;
};

// Writes tokens as an llm.c shard, atomically (PATH.tmp then rename).
void write_shard(const std::string& path, const std::vector<uint16_t>& tokens);

// A split (train or val) made of one or more shards, sampled as windows of T+1 tokens that never
// cross a shard boundary. A shard shorter than a window (llm.c's last one may be) gives no windows;
// at least one shard must give some.
class TokenSplit {
 public:
  TokenSplit(const std::vector<std::string>& paths, int64_t window);  // throws DataError
  int64_t tokens() const;
  // Fills x, y (each B*T, row-major [B, T]) with the windows at the given random draws; checks
  // every token is < vocab_size (else DataError naming the shard and position).
  void fill(const std::vector<uint64_t>& draws, int B, int T, int vocab_size, int64_t* x, int64_t* y) const;

 private:
  std::vector<std::unique_ptr<MappedShard>> shards_;
  std::vector<int64_t> cumulative_starts_;  // valid window starts, summed over shards
  int64_t window_;
};

// The batches a job sees, drawn from its seed alone: micro-batch `micro` of iteration `iter` is the
// same for every step of a matrix and after a resume. Validation batch k is the same for every job,
// whatever its seed, so seeds vary the training and never the yardstick.
struct BatchOrder {
  uint64_t seed;
  std::vector<uint64_t> train_draws(int64_t iter, int micro, int B) const;
  std::vector<uint64_t> val_draws(int k, int B) const;
};

// A prepared dataset directory: its train/val shards and the tokenizer that made them.
struct DatasetFiles {
  std::string dir;
  std::vector<std::string> train, val;
  std::string tokenizer;  // from meta.json; empty when the folder has none (nanoGPT's own folders)
};

// Finds train/val shards in DIR (train.bin/val.bin, or llm.c's *_train_*.bin/*_val_*.bin).
DatasetFiles find_dataset(const std::string& dir);

// Resolves data.dataset: "fortunes" is prepared under data_dir on first use (safe with concurrent
// workers: built in a private temp folder, then renamed into place); anything else is a directory.
// Checks that the shards were made with `tokenizer` when the folder records it.
DatasetFiles resolve_dataset(const std::string& dataset, const std::string& tokenizer, const std::string& data_dir);

// The plain-text fortune files (not .dat/.u8), sorted: $RATIO_FORTUNES_DIR, else /usr/share/games/fortunes.
std::vector<std::string> fortune_files();

// Default data dir: $RATIO_DATA_DIR, else ~/.cache/ratio/data.
std::string default_data_dir();

}  // namespace ratio::worker
