// ratio-worker: trains one job of a RATIO matrix (docs/job-spec.md), prepares token shards, and
// prints the KV-cache report. Usage: ratio-worker --help.

#include <cmath>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "worker/data.h"
#include "worker/events.h"
#include "worker/kv.h"
#include "worker/prepare.h"
#include "worker/trainer.h"

namespace {

const char* kUsage =
    "usage:\n"
    "  ratio-worker run --job JOB.json --workdir DIR [--data-dir DIR] [--report URL --token T] [--resume]\n"
    "                   [--heartbeat-s S] [--max-threads N]\n"
    "                   (train.gpus > 1: this is rank 0, which starts the others with --rank R --rendezvous FILE)\n"
    "  ratio-worker prepare --input TEXT|DIR|JSONL --out DIR --tokenizer byte|gpt2 [--val-frac 0.1]\n"
    "                       [--shard-tokens 100000000] [--threads N (default: every core)]\n"
    "  ratio-worker kv-report [--contexts 1024,2048,4096]\n"
    "exit codes: 0 done, 1 crashed, 2 invalid spec/arguments, 3 data error, 4 diverged, 5 out of memory, 6 interrupted\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// --flag VALUE pairs and bare --switches; `switches` lists the flags that take no value.
std::map<std::string, std::string> parse_flags(int argc, char** argv, int first, const std::vector<std::string>& allowed,
                                               const std::vector<std::string>& switches) {
  std::map<std::string, std::string> flags;
  for (int i = first; i < argc; ++i) {
    const std::string flag = argv[i];
    auto is = [&](const std::vector<std::string>& list) {
      for (const auto& f : list)
        if (f == flag) return true;
      return false;
    };
    if (is(switches)) {
      flags[flag] = "1";
    } else if (is(allowed)) {
      if (i + 1 >= argc) throw UsageError(flag + " needs a value");
      flags[flag] = argv[++i];
    } else {
      throw UsageError("unknown argument '" + flag + "'");
    }
  }
  return flags;
}

std::string required(const std::map<std::string, std::string>& flags, const std::string& flag) {
  auto it = flags.find(flag);
  if (it == flags.end() || it->second.empty()) throw UsageError("missing " + flag);
  return it->second;
}

// A flag's number, NaN when it is not one (so every range check rejects it).
double number_or_nan(const std::string& text) {
  try {
    return std::stod(text);
  } catch (const std::exception&) {
    return std::numeric_limits<double>::quiet_NaN();
  }
}

int run_command(int argc, char** argv) {
  auto flags = parse_flags(argc, argv, 2, {"--job", "--workdir", "--data-dir", "--report", "--token", "--heartbeat-s",
                                          "--max-threads", "--rank", "--rendezvous"},
                           {"--resume"});
  ratio::worker::RunOptions options;
  options.job_path = required(flags, "--job");
  options.workdir = required(flags, "--workdir");
  options.data_dir = flags.count("--data-dir") ? flags["--data-dir"] : "";
  options.report_url = flags.count("--report") ? flags["--report"] : "";
  options.token = flags.count("--token") ? flags["--token"] : "";
  options.resume = flags.count("--resume") > 0;
  if (flags.count("--heartbeat-s")) {
    options.heartbeat_s = number_or_nan(flags["--heartbeat-s"]);
    if (!(options.heartbeat_s > 0)) throw UsageError("--heartbeat-s needs a positive number of seconds");
  }
  if (flags.count("--max-threads")) {
    const double threads = number_or_nan(flags["--max-threads"]);
    if (!(threads >= 1 && threads <= std::numeric_limits<int>::max()))
      throw UsageError("--max-threads needs a positive integer");
    options.max_threads = static_cast<int>(threads);
  }
  if (flags.count("--rank")) {
    const double rank = number_or_nan(flags["--rank"]);
    if (!(rank >= 1 && rank <= 64 && rank == std::floor(rank))) throw UsageError("--rank needs an integer in [1, 64]");
    options.rank = static_cast<int>(rank);
    options.rendezvous = required(flags, "--rendezvous");
  }
  if (!options.report_url.empty() && options.token.empty()) throw UsageError("--report needs --token");
  return ratio::worker::run_job(options);
}

int prepare_command(int argc, char** argv) {
  auto flags = parse_flags(argc, argv, 2, {"--input", "--out", "--tokenizer", "--val-frac", "--shard-tokens", "--threads"}, {});
  ratio::worker::PrepareOptions options;
  options.input = required(flags, "--input");
  options.out_dir = required(flags, "--out");
  options.tokenizer = required(flags, "--tokenizer");
  if (flags.count("--val-frac")) options.val_frac = number_or_nan(flags["--val-frac"]);
  if (flags.count("--shard-tokens")) {
    const double tokens = number_or_nan(flags["--shard-tokens"]);
    if (!(tokens >= 1 && tokens <= std::numeric_limits<int32_t>::max() && tokens == std::floor(tokens)))
      throw UsageError("--shard-tokens needs an integer in [1, 2^31 - 1]");
    options.shard_tokens = static_cast<int64_t>(tokens);
  }
  if (flags.count("--threads")) {
    const double threads = number_or_nan(flags["--threads"]);
    if (!(threads >= 1 && threads <= 4096 && threads == std::floor(threads))) throw UsageError("--threads needs a positive integer");
    options.threads = static_cast<int>(threads);
  }
  try {
    const ratio::worker::PrepareStats s = ratio::worker::prepare_corpus(options, &std::cerr);
    std::cout << "wrote " << s.train_tokens << " train tokens (" << s.train_shards << " shards) and " << s.val_tokens
              << " val tokens (" << s.val_shards << " shards) of " << s.documents << " documents to " << options.out_dir
              << "\n";
    return ratio::worker::kExitDone;
  } catch (const ratio::worker::DataError& e) {
    std::cerr << "ratio-worker: data error: " << e.what() << "\n";
    return ratio::worker::kExitDataError;
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  } catch (const std::runtime_error& e) {  // tokenizer files
    std::cerr << "ratio-worker: data error: " << e.what() << "\n";
    return ratio::worker::kExitDataError;
  }
}

int kv_report_command(int argc, char** argv) {
  auto flags = parse_flags(argc, argv, 2, {"--contexts"}, {});
  std::vector<int64_t> contexts = {1024, 2048, 4096};
  if (flags.count("--contexts")) {
    contexts.clear();
    std::string list = flags["--contexts"];
    size_t pos = 0;
    while (pos <= list.size()) {
      size_t comma = list.find(',', pos);
      const std::string item = list.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
      char* end = nullptr;
      const long long value = std::strtoll(item.c_str(), &end, 10);
      if (item.empty() || *end != '\0' || value <= 0) throw UsageError("--contexts: '" + item + "' is not a positive integer");
      contexts.push_back(value);
      if (comma == std::string::npos) break;
      pos = comma + 1;
    }
  }
  return ratio::worker::kv_report(contexts, std::cout);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string command = argc > 1 ? argv[1] : "";
  if (command == "--help" || command == "-h" || command == "help") {
    std::cout << kUsage;
    return 0;
  }
  try {
    if (command == "run") {
      try {
        return run_command(argc, argv);
      } catch (const UsageError& e) {  // a run always ends with a failed event, even for bad arguments
        ratio::worker::EventSink(std::cout).emit(
            "failed", {{"reason", std::string("invalid arguments: ") + e.what()}, {"exit_code", ratio::worker::kExitInvalid}});
        throw;
      }
    }
    if (command == "prepare") return prepare_command(argc, argv);
    if (command == "kv-report") return kv_report_command(argc, argv);
    throw UsageError(command.empty() ? "missing command" : "unknown command '" + command + "'");
  } catch (const UsageError& e) {
    std::cerr << "ratio-worker: " << e.what() << "\n" << kUsage;
    return ratio::worker::kExitInvalid;
  }
}
