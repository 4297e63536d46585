#pragma once
// `ratio-worker prepare`: a corpus (a text file, a folder of text files, or JSONL with a "text"
// field) tokenized into llm.c-style shards, streamed (memory does not grow with the corpus), on
// every core (the tokens do not depend on the thread count). No LibTorch here.

#include <cstdint>
#include <ostream>
#include <string>

namespace ratio::worker {

struct PrepareOptions {
  std::string input;      // a text file, a .jsonl file, or a folder of both (read recursively, sorted)
  std::string out_dir;    // gets NAME_train_000001.bin..., NAME_val_000001.bin..., meta.json; NAME = its basename
  std::string tokenizer;  // byte | gpt2
  double val_frac = 0.1;  // every 1/val_frac-th document goes to val; a single text file: its last val_frac
  int64_t shard_tokens = 100'000'000;  // tokens per shard, as llm.c's fineweb.py
  int threads = 0;                     // 0: every core
};

struct PrepareStats {
  int64_t input_bytes = 0, documents = 0;
  int64_t train_tokens = 0, val_tokens = 0;
  int train_shards = 0, val_shards = 0;
  double seconds = 0;
};

// Throws DataError (unreadable input, bad JSONL line, no val document, OUT already prepared) with
// the file and line, and std::invalid_argument for bad options. `progress` (may be null) gets a line
// about every second: MB read, MB/s, tokens, ETA.
PrepareStats prepare_corpus(const PrepareOptions& options, std::ostream* progress);

}  // namespace ratio::worker
