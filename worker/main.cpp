// ratio-worker: trains one job of a RATIO matrix (docs/job-spec.md), prepares token shards, and
// prints the KV-cache report. Usage: ratio-worker --help.

#include <cmath>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "ratio/build_info.h"
#include "worker/data.h"
#include "worker/events.h"
#include "worker/kv.h"
#include "worker/prepare.h"
#include "worker/trainer.h"

namespace {

const char* kFooter = R"(
Run `ratio-worker COMMAND --help` for a command's options.

Environment: RATIO_DATA_DIR (the default --data-dir, else ~/.cache/ratio/data), RATIO_FORTUNES_DIR (the
fortune files of the built-in corpus, else /usr/share/games/fortunes), RATIO_GPT2_VOCAB_DIR (GPT-2's
encoder.json and vocab.bpe).

Exit codes: 0 done, 1 crashed, 2 invalid spec/arguments, 3 data error, 4 diverged, 5 out of memory,
6 interrupted.
)";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A number in [min, max], an integer when `integer`; `what` completes "--flag needs ...".
CLI::Validator number_in(double min, double max, bool integer, const std::string& what) {
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        char* end = nullptr;
        const double value = std::strtod(text.c_str(), &end);
        const bool ok = !text.empty() && *end == '\0' && value >= min && value <= max &&
                        (!integer || value == std::floor(value));
        return ok ? "" : "needs " + what + ", got '" + text + "'";
      },
      "");
}

// "1024,2048,4096": positive integers.
std::vector<int64_t> parse_contexts(const std::string& list) {
  std::vector<int64_t> contexts;
  size_t pos = 0;
  while (pos <= list.size()) {
    const size_t comma = list.find(',', pos);
    const std::string item = list.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    char* end = nullptr;
    const long long value = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || value <= 0) throw UsageError("--contexts: '" + item + "' is not a positive integer");
    contexts.push_back(value);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return contexts;
}

int prepare(const ratio::worker::PrepareOptions& options) {
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

}  // namespace

int main(int argc, char** argv) {
  namespace w = ratio::worker;
  CLI::App app("ratio-worker: trains one job of a RATIO matrix (docs/job-spec.md), prepares token shards, "
               "and prints the KV-cache report.",
               "ratio-worker");
  app.set_version_flag("--version", ratio::version_text("ratio-worker"), "print the version and build id, then exit");
  app.require_subcommand(1);
  app.get_formatter()->column_width(30);

  // A new option is one line on its command.
  w::RunOptions run;
  CLI::App* run_cmd = app.add_subcommand("run", "train one job; events (JSON lines) on stdout");
  run_cmd->add_option("--job", run.job_path, "the job spec (JSON)")->required()->type_name("JOB.json");
  run_cmd->add_option("--workdir", run.workdir, "checkpoints and result.json go here")->required()->type_name("DIR");
  run_cmd->add_option("--data-dir", run.data_dir, "datasets (default $RATIO_DATA_DIR, else ~/.cache/ratio/data)")
      ->type_name("DIR");
  run_cmd->add_option("--report", run.report_url, "also POST every event to this URL (needs --token)")->type_name("URL");
  run_cmd->add_option("--token", run.token, "bearer token for --report")->type_name("T");
  run_cmd->add_flag("--resume", run.resume, "continue from the checkpoint in --workdir");
  run_cmd->add_option("--heartbeat-s", run.heartbeat_s, "a heartbeat event this often, whatever training does")
      ->type_name("S")->check(number_in(1e-9, 1e12, false, "a positive number of seconds"));
  run_cmd->add_option("--max-threads", run.max_threads, "at most N CPU threads")
      ->type_name("N")->check(number_in(1, std::numeric_limits<int>::max(), true, "a positive integer"));
  CLI::Option* rendezvous = run_cmd->add_option("--rendezvous", run.rendezvous, "the ranks' c10d FileStore (with --rank)")
                               ->type_name("FILE");
  run_cmd->add_option("--rank", run.rank, "data-parallel rank R ≥ 1 of train.gpus; rank 0 (no --rank) starts the others")
      ->type_name("R")->check(number_in(1, 64, true, "an integer in [1, 64]"))->needs(rendezvous);

  w::PrepareOptions prep;
  CLI::App* prepare_cmd = app.add_subcommand("prepare", "tokenize text into shards for data.dataset");
  prepare_cmd->add_option("--input", prep.input, "a text file, a .jsonl file, or a folder of both")
      ->required()->type_name("TEXT|DIR|JSONL");
  prepare_cmd->add_option("--out", prep.out_dir, "the dataset folder to write")->required()->type_name("DIR");
  prepare_cmd->add_option("--tokenizer", prep.tokenizer, "byte or gpt2")->required()->check(CLI::IsMember({"byte", "gpt2"}));
  prepare_cmd->add_option("--val-frac", prep.val_frac, "the share of documents for validation")->capture_default_str();
  prepare_cmd->add_option("--shard-tokens", prep.shard_tokens, "tokens per shard")
      ->capture_default_str()->check(number_in(1, std::numeric_limits<int32_t>::max(), true, "an integer in [1, 2^31 - 1]"));
  prepare_cmd->add_option("--threads", prep.threads, "tokenizer threads (default: every core)")
      ->type_name("N")->check(number_in(1, 4096, true, "a positive integer"));

  std::string contexts = "1024,2048,4096";
  CLI::App* kv_cmd = app.add_subcommand("kv-report", "KV-cache bytes per token of each attention variant");
  kv_cmd->add_option("--contexts", contexts, "context lengths")->capture_default_str()->type_name("N,N,...");
  app.footer(kFooter);  // after the commands, which would inherit it

  try {
    try {
      app.parse(argc, argv);
      if (run_cmd->parsed() && !run.report_url.empty() && run.token.empty()) throw UsageError("--report needs --token");
    } catch (const CLI::CallForHelp&) {
      std::cout << app.help();
      return w::kExitDone;
    } catch (const CLI::CallForVersion&) {
      std::cout << ratio::version_text("ratio-worker");
      return w::kExitDone;
    } catch (const CLI::ParseError& e) {
      const std::vector<CLI::App*> commands = app.get_subcommands();
      const std::string name = commands.empty() ? "" : commands.front()->get_name() + " ";
      throw UsageError(std::string(e.what()) + " (ratio-worker " + name + "--help)");
    }
  } catch (const UsageError& e) {
    if (run_cmd->parsed())  // a run always ends with a failed event, even for bad arguments
      w::EventSink(std::cout).emit("failed",
                                   {{"reason", std::string("invalid arguments: ") + e.what()}, {"exit_code", w::kExitInvalid}});
    std::cerr << "ratio-worker: " << e.what() << "\n";
    return w::kExitInvalid;
  }

  try {
    if (run_cmd->parsed()) return w::run_job(run);
    if (prepare_cmd->parsed()) return prepare(prep);
    return w::kv_report(parse_contexts(contexts), std::cout);
  } catch (const UsageError& e) {
    std::cerr << "ratio-worker: " << e.what() << "\n";
    return w::kExitInvalid;
  }
}
