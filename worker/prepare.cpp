#include "worker/prepare.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "worker/data.h"
#include "worker/tokenizer.h"

namespace fs = std::filesystem;

namespace ratio::worker {

namespace {

constexpr size_t kReadBytes = 1 << 20;   // a text file is read, and cut into parts, about this much at a time
constexpr size_t kBatchBytes = 1 << 20;  // text handed to an encoder thread at once

// ---- input -------------------------------------------------------------------------------------

struct Source {
  std::string path;
  bool jsonl;  // one JSON object per line, the document in its "text" field
  int64_t bytes;
};

bool is_jsonl(const fs::path& p) { return p.extension() == ".jsonl"; }

// The files of --input: itself, or every file under the folder (hidden ones skipped), sorted so the
// shards do not depend on the order the file system lists them in.
std::vector<Source> list_sources(const std::string& input) {
  std::error_code ec;
  std::vector<fs::path> paths;
  if (fs::is_directory(input, ec)) {
    for (auto it = fs::recursive_directory_iterator(input, ec); !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      const bool hidden = it->path().filename().string()[0] == '.';
      if (hidden && it->is_directory()) it.disable_recursion_pending();
      if (!hidden && it->is_regular_file()) paths.push_back(it->path());
    }
    if (ec) throw DataError("cannot list " + input + ": " + ec.message());
    std::sort(paths.begin(), paths.end());
    if (paths.empty()) throw DataError("--input " + input + " is a folder without files; give text files or JSONL there");
  } else if (fs::is_regular_file(input, ec)) {
    paths.push_back(input);
  } else {
    throw DataError("--input " + input + " does not exist (give a text file, a .jsonl file or a folder of them)");
  }
  std::vector<Source> sources;
  for (const fs::path& p : paths) {
    // These would be tokenized as bytes of text: refuse them instead.
    for (const char* packed : {".gz", ".zst", ".bz2", ".xz", ".zip", ".parquet", ".arrow"})
      if (p.extension() == packed)
        throw DataError(p.string() + " is compressed or columnar; prepare reads plain text and JSONL: decompress it "
                        "(gunzip, zstd -d) or export JSONL with a \"text\" field first");
    sources.push_back({p.string(), is_jsonl(p), static_cast<int64_t>(fs::file_size(p))});
  }
  return sources;
}

// A stretch of one document, the unit an encoder thread works on.
struct Part {
  std::string text;              // the text, or for JSONL the whole line holding it
  bool json_line = false;        // text is a JSON object whose "text" field is the document
  bool starts_document = false;  // <|endoftext|> goes before it
  bool to_val = false;
  int source = 0;                // index into the sources, for error messages
  int64_t line = 0;              // JSONL line number
};

struct Batch {
  std::vector<Part> parts;
  size_t bytes = 0;
};

// Reads the sources in order and hands out batches of parts; decides which documents go to val.
class CorpusReader {
 public:
  CorpusReader(const std::vector<Source>& sources, const Tokenizer& tokenizer, double val_frac,
               std::function<void(Batch&&)> submit)
      : sources_(sources), tokenizer_(tokenizer), val_frac_(val_frac), submit_(std::move(submit)) {}

  void read_all() {
    const bool one_text_file = sources_.size() == 1 && !sources_[0].jsonl;
    for (int s = 0; s < static_cast<int>(sources_.size()); ++s) {
      if (sources_[s].jsonl) {
        read_jsonl(s);
      } else if (one_text_file) {
        read_split_text_file(s);
      } else {
        read_text(s, 0, sources_[s].bytes, true, next_document_to_val());
      }
    }
    if (!batch_.parts.empty()) submit_(std::move(batch_));
  }

  int64_t documents() const { return documents_; }

 private:
  // Documents spread evenly over val: document i goes there when floor((i+1) f) > floor(i f), so
  // every tenth at 0.1 (as the fortunes corpus does), whatever the corpus' length.
  bool next_document_to_val() {
    const double i = static_cast<double>(documents_++);
    return std::floor((i + 1) * val_frac_) > std::floor(i * val_frac_);
  }

  void add(Part part) {
    batch_.bytes += part.text.size();
    batch_.parts.push_back(std::move(part));
    if (batch_.bytes >= kBatchBytes) {
      submit_(std::move(batch_));
      batch_ = Batch{};
    }
  }

  std::ifstream open(int s) const {
    std::ifstream in(sources_[s].path, std::ios::binary);
    if (!in) throw DataError("cannot read " + sources_[s].path + ": " + std::strerror(errno));
    return in;
  }

  // Bytes [begin, end) of a text file, in parts cut where the tokenizer allows (a document longer
  // than memory streams; the tokens equal those of the whole).
  void read_text(int s, int64_t begin, int64_t end, bool starts_document, bool to_val) {
    std::ifstream in = open(s);
    in.seekg(begin);
    std::string carry;
    int64_t left = end - begin;
    bool first = true;
    if (left == 0) add(Part{"", false, starts_document, to_val, s, 0});  // an empty document still counts
    while (left > 0 || !carry.empty()) {
      const size_t unscanned = carry.size() > 4 ? carry.size() - 4 : 1;  // no cut before: the last bytes lacked context
      if (left > 0) {
        const size_t n = static_cast<size_t>(std::min<int64_t>(left, kReadBytes)), old = carry.size();
        carry.resize(old + n);
        if (!in.read(&carry[old], static_cast<std::streamsize>(n)))
          throw DataError("short read from " + sources_[s].path + " (did it change while being prepared?)");
        left -= static_cast<int64_t>(n);
      }
      size_t cut = carry.size();
      if (left > 0) {  // more to come: cut at the last place the tokenizer allows, keep the rest
        cut = last_cut(carry, unscanned);
        if (cut == 0) continue;
      }
      add(Part{carry.substr(0, cut), false, starts_document && first, to_val, s, 0});
      first = false;
      carry.erase(0, cut);
    }
  }

  // The last p >= from where the tokenizer may cut text, else 0.
  size_t last_cut(std::string_view text, size_t from) const {
    for (size_t p = text.size() - 1; p >= from && p > 0; --p)
      if (tokenizer_.can_split_at(text, p)) return p;
    return 0;
  }

  // One text file is one document, which cannot be split by documents: as nanoGPT does, its last
  // val_frac (from the first place after that the tokenizer may cut) is val.
  void read_split_text_file(int s) {
    const int64_t size = sources_[s].bytes;
    const int64_t val_from = size - static_cast<int64_t>(static_cast<double>(size) * val_frac_);
    const int64_t cut = first_cut_from(s, val_from);
    ++documents_;
    read_text(s, 0, cut, true, false);
    if (cut < size) read_text(s, cut, size, false, true);
  }

  int64_t first_cut_from(int s, int64_t from) {
    const int64_t size = sources_[s].bytes;
    std::ifstream in = open(s);
    for (int64_t begin = std::max<int64_t>(from - 4, 0); begin < size; begin += kReadBytes) {
      std::string window(static_cast<size_t>(std::min<int64_t>(kReadBytes + 4, size - begin)), '\0');
      in.seekg(begin);
      in.read(&window[0], static_cast<std::streamsize>(window.size()));
      for (size_t p = static_cast<size_t>(std::max<int64_t>(from - begin, 1)); p < window.size(); ++p)
        if (tokenizer_.can_split_at(window, p)) return begin + static_cast<int64_t>(p);
    }
    return size;
  }

  void read_jsonl(int s) {
    std::ifstream in = open(s);
    std::string line;
    for (int64_t line_no = 1; std::getline(in, line); ++line_no) {
      if (line.empty() || line == "\r") continue;
      add(Part{std::move(line), true, true, next_document_to_val(), s, line_no});
      line = std::string();
    }
  }

  const std::vector<Source>& sources_;
  const Tokenizer& tokenizer_;
  double val_frac_;
  std::function<void(Batch&&)> submit_;
  Batch batch_;
  int64_t documents_ = 0;
};

// ---- encoding ----------------------------------------------------------------------------------

std::string document_text(const Part& part, const std::vector<Source>& sources) {
  if (!part.json_line) return part.text;
  const std::string where = sources[part.source].path + ":" + std::to_string(part.line);
  nlohmann::json row;
  try {
    row = nlohmann::json::parse(part.text);
  } catch (const nlohmann::json::exception& e) {
    throw DataError(where + " is not JSON (" + e.what() + "); each line of a .jsonl file must be one JSON object");
  }
  if (!row.is_object() || !row.contains("text") || !row["text"].is_string())
    throw DataError(where + " has no string field \"text\"; prepare reads the document from each line's \"text\"");
  return row["text"].get<std::string>();
}

using EncodedBatch = std::vector<std::vector<uint16_t>>;  // the tokens of each part

EncodedBatch encode_batch(const Batch& batch, const Tokenizer& tokenizer, const std::vector<Source>& sources,
                          EncodeCache& cache) {
  EncodedBatch encoded(batch.parts.size());
  for (size_t k = 0; k < batch.parts.size(); ++k) {
    const Part& part = batch.parts[k];
    if (part.starts_document && tokenizer.end_of_text() >= 0) encoded[k].push_back(static_cast<uint16_t>(tokenizer.end_of_text()));
    tokenizer.encode(document_text(part, sources), encoded[k], cache);
  }
  return encoded;
}

// Batches are encoded on `threads` threads and written in the order they were submitted, so the
// shards hold the same tokens whatever the thread count. At most 2 * threads batches are in flight,
// which bounds memory.
class EncodePipeline {
 public:
  using Encode = std::function<EncodedBatch(const Batch&, EncodeCache&)>;
  using Write = std::function<void(const Batch&, const EncodedBatch&)>;

  EncodePipeline(int threads, Encode encode, Write write)
      : encode_(std::move(encode)), write_(std::move(write)), slots_(2 * static_cast<size_t>(threads)) {
    for (int t = 0; t < threads; ++t) threads_.emplace_back([this] { encode_loop(); });
  }
  ~EncodePipeline() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    work_cv_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

  void submit(Batch&& batch) {
    if (submitted_ - written_ == static_cast<int64_t>(slots_.size())) write_oldest();
    Slot& slot = slots_[submitted_ % slots_.size()];
    slot.batch = std::move(batch);
    std::lock_guard<std::mutex> lock(mu_);
    slot.done = false;
    queue_.push_back(submitted_++);
    work_cv_.notify_one();
  }

  void finish() {
    while (written_ < submitted_) write_oldest();
  }

 private:
  struct Slot {
    Batch batch;
    EncodedBatch encoded;
    std::exception_ptr error;
    bool done = false;
  };

  void encode_loop() {
    EncodeCache cache;  // one per thread, kept across batches
    while (true) {
      int64_t seq;
      {
        std::unique_lock<std::mutex> lock(mu_);
        work_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (stopping_) return;
        seq = queue_.front();
        queue_.pop_front();
      }
      Slot& slot = slots_[seq % slots_.size()];
      try {
        slot.encoded = encode_(slot.batch, cache);
      } catch (...) {
        slot.error = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(mu_);
      slot.done = true;
      done_cv_.notify_all();
    }
  }

  void write_oldest() {
    Slot& slot = slots_[written_ % slots_.size()];
    {
      std::unique_lock<std::mutex> lock(mu_);
      done_cv_.wait(lock, [&] { return slot.done; });
    }
    if (slot.error) std::rethrow_exception(slot.error);
    write_(slot.batch, slot.encoded);
    slot.batch = Batch{};
    slot.encoded.clear();
    ++written_;
  }

  Encode encode_;
  Write write_;
  std::vector<Slot> slots_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  std::deque<int64_t> queue_;
  bool stopping_ = false;
  int64_t submitted_ = 0, written_ = 0;
};

// ---- output ------------------------------------------------------------------------------------

// One split's numbered llm.c shards (PREFIX000001.bin, ...): header, then tokens streamed to disk;
// the count is patched into the header when a shard is full, then PATH.tmp is renamed to PATH.
class ShardWriter {
 public:
  ShardWriter(std::string prefix, int64_t shard_tokens) : prefix_(std::move(prefix)), shard_tokens_(shard_tokens) {}
  ~ShardWriter() {
    if (file_) std::fclose(file_);
  }

  void append(const uint16_t* tokens, size_t n) {
    while (n > 0) {
      if (!file_) open_next();
      const size_t room = static_cast<size_t>(shard_tokens_ - in_shard_), take = std::min(n, room);
      if (std::fwrite(tokens, sizeof(uint16_t), take, file_) != take) fail("short write (disk full?)");
      in_shard_ += static_cast<int64_t>(take);
      tokens_ += static_cast<int64_t>(take);
      tokens += take;
      n -= take;
      if (in_shard_ == shard_tokens_) close_current();
    }
  }

  void finish() {
    if (file_) close_current();
  }

  int64_t tokens() const { return tokens_; }
  const std::vector<std::string>& paths() const { return paths_; }  // finished and in progress

 private:
  void open_next() {
    char number[16];
    std::snprintf(number, sizeof number, "%06d", static_cast<int>(paths_.size()) + 1);
    paths_.push_back(prefix_ + number + ".bin");
    file_ = std::fopen((paths_.back() + ".tmp").c_str(), "wb");
    if (!file_) throw DataError("cannot write " + paths_.back() + ".tmp: " + std::strerror(errno));
    write_header(0);
    in_shard_ = 0;
  }

  void write_header(int64_t count) {
    int32_t header[kLlmcHeaderInts] = {kLlmcMagic, 1, static_cast<int32_t>(count)};
    if (std::fwrite(header, sizeof header, 1, file_) != 1) fail("cannot write the header");
  }

  void close_current() {
    std::fseek(file_, 0, SEEK_SET);
    write_header(in_shard_);
    const bool closed = std::fclose(file_) == 0;
    file_ = nullptr;
    if (!closed) fail("cannot close (disk full?)");
    const std::string path = paths_.back();
    if (std::rename((path + ".tmp").c_str(), path.c_str()) != 0) fail("cannot rename into place");
  }

  [[noreturn]] void fail(const std::string& what) const {
    throw DataError(paths_.back() + ": " + what + ": " + std::strerror(errno));
  }

  std::string prefix_;
  int64_t shard_tokens_;
  FILE* file_ = nullptr;
  int64_t in_shard_ = 0, tokens_ = 0;
  std::vector<std::string> paths_;
};

// ---- progress ----------------------------------------------------------------------------------

class Progress {
 public:
  Progress(std::ostream* out, int64_t total_bytes) : out_(out), total_bytes_(total_bytes) {}

  void add(int64_t bytes, int64_t tokens) {
    bytes_ += bytes;
    tokens_ += tokens;
    if (out_ && seconds() - last_report_s_ >= kEveryS) report();
  }

  double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }

  // "prepare: 512.0/1024.0 MB (50%), 25.3 MB/s, 120.5M tokens, ETA 20 s"
  void report() {
    last_report_s_ = seconds();
    const double mb = bytes_ / 1e6, rate = mb / std::max(last_report_s_, 1e-9);
    const double eta = rate > 0 ? std::max(total_bytes_ / 1e6 - mb, 0.0) / rate : 0;
    char line[160];
    std::snprintf(line, sizeof line, "prepare: %.1f/%.1f MB (%.0f%%), %.1f MB/s, %.1fM tokens, ETA %.0f s\n", mb,
                  total_bytes_ / 1e6, total_bytes_ > 0 ? 100.0 * bytes_ / total_bytes_ : 100.0, rate, tokens_ / 1e6, eta);
    *out_ << line << std::flush;
  }

 private:
  static constexpr double kEveryS = 2.0;
  std::ostream* out_;
  int64_t total_bytes_, bytes_ = 0, tokens_ = 0;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  double last_report_s_ = 0;
};

void check_options(const PrepareOptions& o) {
  if (!(o.val_frac > 0.0 && o.val_frac < 1.0)) throw std::invalid_argument("--val-frac must be in (0, 1)");
  if (o.shard_tokens < 1 || o.shard_tokens > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("--shard-tokens must be in [1, 2^31 - 1] (llm.c's header holds an int32 count)");
  if (o.threads < 0) throw std::invalid_argument("--threads must be >= 1 (or 0 for every core)");
}

// Refuses a folder that already holds shards: stale ones would be read along with the new ones.
void check_out_dir(const std::string& out_dir) {
  std::error_code ec;
  if (!fs::is_directory(out_dir, ec)) return;
  for (const auto& entry : fs::directory_iterator(out_dir)) {
    const std::string name = entry.path().filename().string();
    if (name == "meta.json" || entry.path().extension() == ".bin")
      throw DataError(out_dir + " already holds a prepared dataset (" + name + "); delete it or choose another --out");
  }
}

void write_meta(const std::string& dir, const Tokenizer& tokenizer, const PrepareStats& stats) {
  const nlohmann::json meta = {{"tokenizer", tokenizer.name()},      {"vocab_size", tokenizer.vocab_size()},
                               {"train_tokens", stats.train_tokens}, {"val_tokens", stats.val_tokens},
                               {"documents", stats.documents},       {"input_bytes", stats.input_bytes}};
  const std::string tmp = dir + "/meta.json.tmp";
  std::ofstream(tmp) << meta.dump(2) << "\n";
  fs::rename(tmp, dir + "/meta.json");
}

int thread_count(int requested) {
  if (requested > 0) return requested;
  return std::max(1u, std::thread::hardware_concurrency());
}

}  // namespace

PrepareStats prepare_corpus(const PrepareOptions& options, std::ostream* progress_out) {
  check_options(options);
  const std::unique_ptr<Tokenizer> tokenizer = make_tokenizer(options.tokenizer);
  const std::vector<Source> sources = list_sources(options.input);
  check_out_dir(options.out_dir);
  fs::create_directories(options.out_dir);

  PrepareStats stats;
  for (const Source& s : sources) stats.input_bytes += s.bytes;
  const std::string name = fs::path(options.out_dir).lexically_normal().filename().string();
  const std::string prefix = options.out_dir + "/" + (name.empty() || name == "." ? "data" : name);
  ShardWriter train(prefix + "_train_", options.shard_tokens), val(prefix + "_val_", options.shard_tokens);
  Progress progress(progress_out, stats.input_bytes);
  try {
    EncodePipeline pipeline(
        thread_count(options.threads),
        [&](const Batch& batch, EncodeCache& cache) { return encode_batch(batch, *tokenizer, sources, cache); },
        [&](const Batch& batch, const EncodedBatch& encoded) {
          int64_t tokens = 0;
          for (size_t k = 0; k < encoded.size(); ++k) {
            (batch.parts[k].to_val ? val : train).append(encoded[k].data(), encoded[k].size());
            tokens += static_cast<int64_t>(encoded[k].size());
          }
          progress.add(static_cast<int64_t>(batch.bytes), tokens);
        });
    CorpusReader reader(sources, *tokenizer, options.val_frac, [&](Batch&& b) { pipeline.submit(std::move(b)); });
    reader.read_all();
    pipeline.finish();
    train.finish();
    val.finish();
    stats.documents = reader.documents();
    if (train.tokens() == 0 || val.tokens() == 0) {
      char why[320];
      std::snprintf(why, sizeof why,
                    " has %lld documents, which gave %lld train and %lld val tokens: at --val-frac %g one document in "
                    "%g goes to val (a single text file: its last %g of bytes); give more text or change --val-frac",
                    static_cast<long long>(stats.documents), static_cast<long long>(train.tokens()),
                    static_cast<long long>(val.tokens()), options.val_frac, 1 / options.val_frac, options.val_frac);
      throw DataError(options.input + why);
    }
  } catch (...) {  // leave no partial dataset behind
    for (const ShardWriter* w : {&train, &val})
      for (const std::string& p : w->paths()) {
        std::remove(p.c_str());
        std::remove((p + ".tmp").c_str());
      }
    throw;
  }
  stats.train_tokens = train.tokens();
  stats.val_tokens = val.tokens();
  stats.train_shards = static_cast<int>(train.paths().size());
  stats.val_shards = static_cast<int>(val.paths().size());
  write_meta(options.out_dir, *tokenizer, stats);
  stats.seconds = progress.seconds();
  if (progress_out) progress.report();
  return stats;
}

}  // namespace ratio::worker
