#include "worker/data.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "worker/tokenizer.h"

namespace fs = std::filesystem;

namespace ratio::worker {

// ---- shards -----------------------------------------------------------------------------------

MappedShard::MappedShard(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw DataError("cannot open shard " + path + ": " + std::strerror(errno));
  struct stat st {};
  ::fstat(fd, &st);
  map_bytes_ = static_cast<size_t>(st.st_size);
  if (map_bytes_ < 2) {
    ::close(fd);
    throw DataError("shard " + path + " is empty; re-run `ratio-worker prepare`");
  }
  map_ = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    throw DataError("cannot mmap shard " + path + ": " + std::strerror(errno));
  }
  const auto* header = static_cast<const int32_t*>(map_);
  const size_t header_bytes = kLlmcHeaderInts * sizeof(int32_t);
  if (map_bytes_ >= header_bytes && header[0] == kLlmcMagic) {
    if (header[1] != 1)
      throw DataError("shard " + path + " is llm.c version " + std::to_string(header[1]) +
                      "; only version 1 (uint16 GPT-2 tokens) is supported");
    const int64_t declared = header[2];
    const int64_t present = static_cast<int64_t>((map_bytes_ - header_bytes) / sizeof(uint16_t));
    if (declared <= 0 || present != declared || (map_bytes_ - header_bytes) % 2 != 0)
      throw DataError("shard " + path + " is corrupt: header says " + std::to_string(declared) +
                      " tokens, file holds " + std::to_string(present) + "; re-run `ratio-worker prepare`");
    tokens_ = reinterpret_cast<const uint16_t*>(static_cast<const char*>(map_) + header_bytes);
    count_ = declared;
  } else {
    if (map_bytes_ % 2 != 0)
      throw DataError("shard " + path + " has an odd size (" + std::to_string(map_bytes_) +
                      " bytes): not raw uint16 tokens; re-run `ratio-worker prepare`");
    tokens_ = static_cast<const uint16_t*>(map_);
    count_ = static_cast<int64_t>(map_bytes_ / 2);
  }
}

MappedShard::~MappedShard() {
  if (map_) ::munmap(map_, map_bytes_);
}

void write_shard(const std::string& path, const std::vector<uint16_t>& tokens) {
  std::vector<int32_t> header(kLlmcHeaderInts, 0);
  header[0] = kLlmcMagic;
  header[1] = 1;
  header[2] = static_cast<int32_t>(tokens.size());
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw DataError("cannot write " + tmp + ": " + std::strerror(errno));
    out.write(reinterpret_cast<const char*>(header.data()), header.size() * sizeof(int32_t));
    out.write(reinterpret_cast<const char*>(tokens.data()), tokens.size() * sizeof(uint16_t));
    if (!out) throw DataError("short write to " + tmp + " (disk full?)");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    throw DataError("cannot rename " + tmp + " to " + path + ": " + std::strerror(errno));
}

// ---- splits and batch order -------------------------------------------------------------------

TokenSplit::TokenSplit(const std::vector<std::string>& paths, int64_t window) : window_(window) {
  int64_t total = 0;
  for (const std::string& p : paths) {
    auto shard = std::make_unique<MappedShard>(p);
    total += std::max<int64_t>(shard->size() - window + 1, 0);
    cumulative_starts_.push_back(total);
    shards_.push_back(std::move(shard));
  }
  if (shards_.empty()) throw DataError("no shards given");
  if (total == 0)
    throw DataError("shard " + paths[0] + (paths.size() > 1 ? " (and every other one of its split)" : "") + " has " +
                    std::to_string(shards_[0]->size()) + " tokens, fewer than one window of " + std::to_string(window) +
                    " (block_size + 1); use a larger corpus or a smaller block_size");
}

int64_t TokenSplit::tokens() const {
  int64_t n = 0;
  for (const auto& s : shards_) n += s->size();
  return n;
}

void TokenSplit::fill(const std::vector<uint64_t>& draws, int B, int T, int vocab_size, int64_t* x, int64_t* y) const {
  const int64_t total = cumulative_starts_.back();
  for (int b = 0; b < B; ++b) {
    int64_t start = static_cast<int64_t>(draws[b] % static_cast<uint64_t>(total));
    size_t s = std::upper_bound(cumulative_starts_.begin(), cumulative_starts_.end(), start) - cumulative_starts_.begin();
    if (s > 0) start -= cumulative_starts_[s - 1];
    const uint16_t* w = shards_[s]->tokens() + start;  // T + 1 tokens
    for (int t = 0; t <= T; ++t) {
      if (w[t] >= vocab_size)
        throw DataError("token " + std::to_string(w[t]) + " at position " + std::to_string(start + t) + " of " +
                        shards_[s]->path() + " is >= model.vocab_size " + std::to_string(vocab_size) +
                        " (shards made with another tokenizer, or corrupt)");
    }
    for (int t = 0; t < T; ++t) {
      x[static_cast<int64_t>(b) * T + t] = w[t];
      y[static_cast<int64_t>(b) * T + t] = w[t + 1];
    }
  }
}

namespace {

uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Counter-based draws: the value depends only on (seed, stream, a, b, row), so any batch can be
// recomputed from its coordinates (no generator state to checkpoint).
uint64_t draw(uint64_t seed, uint64_t stream, uint64_t a, uint64_t b, uint64_t row) {
  uint64_t h = splitmix64(seed ^ 0x5241544941ULL);
  h = splitmix64(h ^ stream);
  h = splitmix64(h ^ a);
  h = splitmix64(h ^ b);
  return splitmix64(h ^ row);
}

}  // namespace

std::vector<uint64_t> BatchOrder::train_draws(int64_t iter, int micro, int B) const {
  std::vector<uint64_t> d(B);
  for (int b = 0; b < B; ++b) d[b] = draw(seed, 1, static_cast<uint64_t>(iter), static_cast<uint64_t>(micro), b);
  return d;
}

std::vector<uint64_t> BatchOrder::val_draws(int k, int B) const {
  // Not the job's seed: every job, whatever its seed, is judged on the same validation batches, so
  // the spread over seeds measures the models and not which text they happened to be scored on.
  constexpr uint64_t kValidationSeed = 0;
  std::vector<uint64_t> d(B);
  for (int b = 0; b < B; ++b) d[b] = draw(kValidationSeed, 2, static_cast<uint64_t>(k), 0, b);
  return d;
}

// ---- datasets ---------------------------------------------------------------------------------

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError("cannot read " + path + ": " + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_meta(const std::string& dir, const std::string& tokenizer, int vocab_size, int64_t train, int64_t val) {
  nlohmann::json meta = {{"tokenizer", tokenizer}, {"vocab_size", vocab_size}, {"train_tokens", train}, {"val_tokens", val}};
  const std::string tmp = dir + "/meta.json.tmp";
  std::ofstream(tmp) << meta.dump(2) << "\n";
  fs::rename(tmp, dir + "/meta.json");
}

bool has_token(const std::string& name, const std::string& split) {
  return name.size() > 4 && name.substr(name.size() - 4) == ".bin" && name.find("_" + split + "_") != std::string::npos;
}

}  // namespace

DatasetFiles find_dataset(const std::string& dir) {
  DatasetFiles files;
  files.dir = dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw DataError("dataset folder " + dir + " does not exist; run `ratio-worker prepare --out " + dir + "` first");
  if (fs::exists(dir + "/train.bin")) files.train.push_back(dir + "/train.bin");
  if (fs::exists(dir + "/val.bin")) files.val.push_back(dir + "/val.bin");
  if (files.train.empty() || files.val.empty()) {
    for (const auto& entry : fs::directory_iterator(dir)) {
      const std::string name = entry.path().filename().string();
      if (has_token(name, "train")) files.train.push_back(entry.path().string());
      if (has_token(name, "val")) files.val.push_back(entry.path().string());
    }
    std::sort(files.train.begin(), files.train.end());
    std::sort(files.val.begin(), files.val.end());
  }
  if (files.train.empty() || files.val.empty())
    throw DataError("dataset folder " + dir + " lacks " + std::string(files.train.empty() ? "train" : "val") +
                    " shards (expected train.bin/val.bin or *_train_*.bin/*_val_*.bin)");
  if (fs::exists(dir + "/meta.json")) {
    try {
      files.tokenizer = nlohmann::json::parse(read_text(dir + "/meta.json")).at("tokenizer").get<std::string>();
    } catch (const nlohmann::json::exception& e) {
      throw DataError(dir + "/meta.json is corrupt (" + e.what() + "); delete the folder and prepare it again");
    }
  }
  return files;
}

std::vector<std::string> fortune_files() {
  // $RATIO_FORTUNES_DIR, else Debian's package, else the copy scripts/gpu-bundle.sh unpacks for GPU
  // machines (which run distributions without the package).
  const char* env = std::getenv("RATIO_FORTUNES_DIR");
  std::string dir = env && *env ? env : "/usr/share/games/fortunes";
  const std::string bundled = std::string(RATIO_SOURCE_DIR) + "/.deps/root/usr/share/games/fortunes";
  std::error_code exists_ec;
  if (!(env && *env) && !fs::is_directory(dir, exists_ec) && fs::is_directory(bundled, exists_ec)) dir = bundled;
  std::vector<std::string> files;
  std::error_code ec;
  if (fs::is_directory(dir, ec)) {
    for (const auto& entry : fs::directory_iterator(dir)) {
      const std::string ext = entry.path().extension().string();
      if (entry.is_regular_file() && ext != ".dat" && ext != ".u8") files.push_back(entry.path().string());
    }
  }
  std::sort(files.begin(), files.end());
  if (files.empty())
    throw DataError("the fortunes corpus needs Debian's fortune files in " + dir +
                    " (apt-get install fortunes, or set RATIO_FORTUNES_DIR, or use a prepared data.dataset folder)");
  return files;
}

namespace {

// Every tenth fortune goes to val, so both splits cover every file's style.
void build_fortunes(const std::string& dir, const std::string& tokenizer_name) {
  std::string train_text, val_text;
  int64_t index = 0;
  for (const std::string& file : fortune_files()) {
    std::istringstream in(read_text(file));
    std::string line, fortune;
    auto flush = [&]() {
      if (fortune.empty()) return;
      (index++ % 10 == 9 ? val_text : train_text) += fortune + "\n";
      fortune.clear();
    };
    while (std::getline(in, line)) {
      if (line == "%") flush();
      else fortune += line + "\n";
    }
    flush();
  }
  std::unique_ptr<Tokenizer> tok = make_tokenizer(tokenizer_name);
  const std::vector<uint16_t> train = tok->encode(train_text), val = tok->encode(val_text);
  write_shard(dir + "/train.bin", train);
  write_shard(dir + "/val.bin", val);
  write_meta(dir, tok->name(), tok->vocab_size(), static_cast<int64_t>(train.size()), static_cast<int64_t>(val.size()));
}

}  // namespace

DatasetFiles resolve_dataset(const std::string& dataset, const std::string& tokenizer, const std::string& data_dir) {
  // A name like "fineweb-edu" is a folder under --data-dir (the presets' convention); an absolute
  // path, or a relative one that exists from here, is used as given.
  std::string dir = dataset;
  std::error_code ec;
  if (fs::path(dataset).is_relative() && !fs::is_directory(dataset, ec)) dir = data_dir + "/" + dataset;
  if (dataset == "fortunes") {
    dir = data_dir + "/fortunes-" + tokenizer;
    if (!fs::exists(dir + "/meta.json")) {
      fs::create_directories(data_dir);
      const std::string tmp = data_dir + "/.fortunes-" + tokenizer + ".tmp." + std::to_string(::getpid());
      fs::remove_all(tmp);
      fs::create_directories(tmp);
      build_fortunes(tmp, tokenizer);
      // rename(2) of a folder onto an existing non-empty one fails: another worker won the race.
      if (std::rename(tmp.c_str(), dir.c_str()) != 0) fs::remove_all(tmp);
    }
  }
  DatasetFiles files = find_dataset(dir);
  if (!files.tokenizer.empty() && files.tokenizer != tokenizer)
    throw DataError("dataset " + dir + " was prepared with the " + files.tokenizer + " tokenizer but data.tokenizer is " +
                    tokenizer + "; set data.tokenizer to " + files.tokenizer + " or prepare the data again");
  return files;
}

std::string default_data_dir() {
  if (const char* d = std::getenv("RATIO_DATA_DIR"); d && *d) return d;
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : "/tmp") + "/.cache/ratio/data";
}

}  // namespace ratio::worker
