// The real ratio-worker binary on CPU: learning on the fortunes corpus, kill -9 / SIGTERM and resume,
// init_from a Hugging Face GPT-2 file, every failure's exit code and one-line reason, and --report
// delivery to a real HTTP server.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "model/gpt.h"
#include "model/safetensors.h"
#include "tests/process_tree.h"
#include "tests/worker_backends.h"
#include "worker/checkpoint.h"
#include "worker/data.h"

namespace fs = std::filesystem;
using nlohmann::json;
using ratio_test::children_of;

namespace {

// $RATIO_BIN_DIR/ratio-worker when set, else the binary this test was built with.
std::string worker_binary() {
  const char* dir = std::getenv("RATIO_BIN_DIR");
  return dir && *dir ? std::string(dir) + "/ratio-worker" : RATIO_WORKER_BINARY;
}

// A tiny model that trains in seconds on 2 cores.
json tiny_job() {
  return {{"model", {{"n_layer", 2}, {"n_head", 2}, {"n_embd", 64}, {"vocab_size", 256}, {"block_size", 64}}},
          {"train", {{"max_iters", 40}, {"batch_size", 8}, {"grad_accum", 2}, {"lr", 3e-3}, {"min_lr", 3e-4},
                     {"warmup_iters", 10}, {"eval_interval", 20}, {"eval_batches", 2}, {"checkpoint_interval", 10},
                     {"log_interval", 5}, {"grad_norm_interval", 10}, {"device", "cpu"}, {"seed", 7}}},
          {"data", {{"dataset", "fortunes"}, {"tokenizer", "byte"}}}};
}

struct WorkerRun {
  int exit_code = -1;
  std::vector<json> events;
  std::string stderr_text;
  const json* last(const std::string& type) const {
    for (auto it = events.rbegin(); it != events.rend(); ++it)
      if ((*it)["type"] == type) return &*it;
    return nullptr;
  }
};

class WorkerCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("ratio_cli_test_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
    fs::remove_all(data_dir());
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  static std::string read_text(const std::string& file) {
    std::ifstream in(file);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }
  // The fortunes corpus is prepared here by the worker itself (its first-use path).
  static std::string data_dir() { return (fs::temp_directory_path() / ("ratio_cli_data_" + std::to_string(::getpid()))).string(); }

  std::string write_job(const std::string& name, const json& job) const {
    std::ofstream(path(name)) << job.dump(2);
    return path(name);
  }

  // Starts ratio-worker with stdout/stderr going to files; returns its pid.
  pid_t start(const std::vector<std::string>& args, const std::string& tag,
              const std::map<std::string, std::string>& env = {}) const {
    const std::string out = path(tag + ".out"), err = path(tag + ".err");
    pid_t pid = ::fork();
    if (pid == 0) {
      int fo = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int fe = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(fo, 1);
      ::dup2(fe, 2);
      for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
      std::vector<std::string> full = {worker_binary()};
      full.insert(full.end(), args.begin(), args.end());
      std::vector<char*> argv;
      for (auto& a : full) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    return pid;
  }

  WorkerRun collect(pid_t pid, const std::string& tag) const {
    int status = 0;
    ::waitpid(pid, &status, 0);
    WorkerRun run;
    run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    run.events = read_events(tag);
    std::ifstream err(path(tag + ".err"));
    std::stringstream ss;
    ss << err.rdbuf();
    run.stderr_text = ss.str();
    return run;
  }

  std::vector<json> read_events(const std::string& tag) const {
    std::vector<json> events;
    std::ifstream out(path(tag + ".out"));
    std::string line;
    while (std::getline(out, line)) {
      try {
        events.push_back(json::parse(line));
      } catch (const json::exception&) {  // a line cut short by kill -9
      }
    }
    return events;
  }

  WorkerRun run(const json& job, const std::string& tag, const std::vector<std::string>& extra = {},
          const std::map<std::string, std::string>& env = {}) const {
    std::vector<std::string> args = {"run", "--job", write_job(tag + ".json", job), "--workdir", path(tag + "_work"),
                                     "--data-dir", data_dir()};
    args.insert(args.end(), extra.begin(), extra.end());
    return collect(start(args, tag, env), tag);
  }

  // The same command line again with --resume, run to its end (tag "resumed").
  WorkerRun resume(std::vector<std::string> args) const {
    args.push_back("--resume");
    return collect(start(args, "resumed"), "resumed");
  }

  // Waits until the run's stdout holds a checkpoint event, then returns.
  void wait_for_checkpoint(const std::string& tag) const {
    for (int i = 0; i < 6000; ++i) {
      for (const json& e : read_events(tag))
        if (e["type"] == "checkpoint") return;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    FAIL() << "no checkpoint event within 60 s";
  }

  // The last stderr line is "ratio-worker: <reason>" and the last event a matching `failed`.
  static void expect_failure(const WorkerRun& run, int code, const std::string& reason_part) {
    EXPECT_EQ(run.exit_code, code) << run.stderr_text;
    ASSERT_FALSE(run.events.empty());
    const json& failed = run.events.back();
    EXPECT_EQ(failed["type"], "failed");
    EXPECT_EQ(failed["exit_code"], code);
    const std::string reason = failed["reason"];
    EXPECT_EQ(reason.find('\n'), std::string::npos);
    EXPECT_NE(reason.find(reason_part), std::string::npos) << reason;
    std::string text = run.stderr_text;
    while (!text.empty() && text.back() == '\n') text.pop_back();
    const std::string last_line = text.substr(text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1);
    EXPECT_EQ(last_line, "ratio-worker: " + reason);
  }

  // Runs `job` with train.cuda_graph on and off (tags <tag>_on, <tag>_off); expects the graphed run
  // to report cuda_graph on, and its every metric and checkpointed tensor to equal the eager run's
  // within `rel_tol`. `iters` metrics each (log_interval 1). Defined with the CUDA graph tests.
  void expect_graph_steps_equal_eager(json job, const std::string& tag, size_t iters, double rel_tol) const;

  fs::path dir_;
};

std::vector<double> series(const WorkerRun& run, const std::string& type, const std::string& field) {
  std::map<int64_t, double> by_iter;  // a resumed run re-reports iterations: the later value wins
  for (const json& e : run.events)
    if (e["type"] == type) by_iter[e["iter"].get<int64_t>()] = e[field].get<double>();
  std::vector<double> out;
  for (const auto& [iter, v] : by_iter) out.push_back(v);
  return out;
}

}  // namespace

TEST_F(WorkerCli, TinyModelLearnsFortunesBelowUnigramEntropy) {
  json job = tiny_job();
  job["model"] = {{"n_layer", 2}, {"n_head", 4}, {"n_embd", 128}, {"vocab_size", 256}, {"block_size", 64}};
  job["train"]["max_iters"] = 200;
  job["train"]["batch_size"] = 16;
  job["train"]["grad_accum"] = 1;
  job["train"]["eval_interval"] = 100;
  job["train"]["eval_batches"] = 8;
  job["train"]["checkpoint_interval"] = 100000;
  job["train"]["log_interval"] = 50;
  WorkerRun r = run(job, "learn");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;

  // Unigram entropy of the training bytes (nats): what a model that ignores context achieves.
  ratio::worker::MappedShard shard(data_dir() + "/fortunes-byte/train.bin");
  std::vector<double> counts(256, 0);
  for (int64_t i = 0; i < shard.size(); ++i) counts[shard.tokens()[i]] += 1;
  double entropy = 0;
  for (double c : counts)
    if (c > 0) entropy -= c / shard.size() * std::log(c / shard.size());
  const json& result = (*r.last("finished"))["result"];
  const double final_loss = result["final_val_loss"];
  std::cerr << "unigram entropy " << entropy << " nats, final val loss " << final_loss << "\n";
  EXPECT_GT(entropy, 2.5);                   // English bytes: about 3 nats
  EXPECT_LT(final_loss, entropy - 0.5);      // it uses context
  EXPECT_LE(result["best_val_loss"].get<double>(), final_loss);
  EXPECT_TRUE(result["mfu"].is_null());      // CPU
  EXPECT_GT(result["tokens_per_s"].get<double>(), 0);
  EXPECT_GT(result["peak_memory_bytes"].get<double>(), 0);
  EXPECT_EQ(result["config_hash"].get<std::string>().size(), 16u);
  const json& started = r.events.front();
  EXPECT_EQ(started["type"], "started");
  EXPECT_EQ(started["iter"], 0);
  EXPECT_EQ(started["device"], "cpu");
  EXPECT_EQ(started["dtype"], "fp32");
  EXPECT_EQ(started["params"]["total"], result["params"]["total"]);
  for (size_t i = 0; i < r.events.size(); ++i) EXPECT_EQ(r.events[i]["seq"], static_cast<int>(i));
  const json* eval = r.last("eval");
  ASSERT_NE(eval, nullptr);
  EXPECT_EQ((*eval)["entropy"].size(), 2u);
  EXPECT_EQ((*eval)["reciprocity"].size(), 2u);
  EXPECT_TRUE(fs::exists(path("learn_work/result.json")));
}

TEST_F(WorkerCli, KillNineThenResumeEqualsUninterruptedRun) {
  json job = tiny_job();
  job["train"]["max_iters"] = 100;
  job["train"]["checkpoint_interval"] = 7;  // mid log interval: the first resumed metric averages all 5 iterations
  WorkerRun straight = run(job, "straight");
  ASSERT_EQ(straight.exit_code, 0) << straight.stderr_text;

  const std::string spec = write_job("killed.json", job);
  const std::vector<std::string> args = {"run", "--job", spec, "--workdir", path("killed_work"), "--data-dir", data_dir()};
  pid_t pid = start(args, "killed");
  wait_for_checkpoint("killed");
  ::kill(pid, SIGKILL);
  WorkerRun killed = collect(pid, "killed");
  ASSERT_EQ(killed.exit_code, -SIGKILL) << "finished before the kill; make the run longer";

  WorkerRun resumed = resume(args);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.stderr_text;
  const int64_t resumed_from = resumed.events.front()["iter"];
  EXPECT_GT(resumed_from, 0);
  EXPECT_LT(resumed_from, 100);

  // Bit-identical: the same doubles, not merely close ones.
  EXPECT_EQ((*resumed.last("finished"))["result"]["final_val_loss"].get<double>(),
            (*straight.last("finished"))["result"]["final_val_loss"].get<double>());
  std::vector<double> straight_losses = series(straight, "metric", "train_loss");
  std::vector<double> resumed_losses = series(resumed, "metric", "train_loss");
  ASSERT_LE(resumed_losses.size(), straight_losses.size());
  EXPECT_TRUE(std::equal(resumed_losses.rbegin(), resumed_losses.rend(), straight_losses.rbegin()));
}

TEST_F(WorkerCli, SigtermCheckpointsExitsSixAndResumes) {
  json job = tiny_job();
  job["train"]["max_iters"] = 100;
  job["train"]["checkpoint_interval"] = 1000;  // only the SIGTERM checkpoint
  job["train"]["spam"] = {{"reset_interval", 30}, {"reset_warmup", 10}};
  job["train"]["prune"] = {{"enabled", true}, {"interval", 10}};
  WorkerRun straight = run(job, "straight");
  ASSERT_EQ(straight.exit_code, 0) << straight.stderr_text;

  const std::vector<std::string> args = {"run", "--job", write_job("term.json", job), "--workdir", path("term_work"),
                                         "--data-dir", data_dir()};
  pid_t pid = start(args, "term");
  for (int i = 0; i < 6000 && series(WorkerRun{0, read_events("term"), ""}, "metric", "train_loss").size() < 3; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ::kill(pid, SIGTERM);
  WorkerRun term = collect(pid, "term");
  expect_failure(term, 6, "interrupted by SIGTERM");
  ASSERT_NE(term.last("checkpoint"), nullptr);

  WorkerRun resumed = resume(args);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.stderr_text;
  EXPECT_EQ(resumed.events.front()["iter"], (*term.last("checkpoint"))["iter"]);
  const json& a = (*resumed.last("finished"))["result"];
  const json& b = (*straight.last("finished"))["result"];
  EXPECT_EQ(a["final_val_loss"].get<double>(), b["final_val_loss"].get<double>());
  // Pruning (50 % of the Linear weights by the end) shows in the effective count.
  EXPECT_LT(a["params"]["effective"].get<int64_t>(), a["params"]["total"].get<int64_t>());
  EXPECT_EQ(a["params"]["effective"], b["params"]["effective"]);
  std::vector<double> straight_losses = series(straight, "metric", "train_loss");
  std::vector<double> resumed_losses = series(resumed, "metric", "train_loss");
  ASSERT_LE(resumed_losses.size(), straight_losses.size());
  EXPECT_TRUE(std::equal(resumed_losses.rbegin(), resumed_losses.rend(), straight_losses.rbegin()));
}


// A checkpoint's meta and its model parameters ("model/..."), read through the worker's own loader.
std::pair<json, ratio::worker::NamedTensors> model_tensors(const std::string& ckpt) {
  std::ifstream in(ckpt, std::ios::binary);
  char magic[8];
  uint64_t header_len = 0;
  in.read(magic, sizeof magic);
  in.read(reinterpret_cast<char*>(&header_len), sizeof header_len);
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  ratio::worker::NamedTensors params;
  const json doc = json::parse(header);
  for (const json& t : doc["tensors"])
    if (t["name"].get<std::string>().rfind("model/", 0) == 0 && t["dtype"] == "float32")
      params.emplace_back(t["name"], torch::zeros(t["shape"].get<std::vector<int64_t>>()));
  const json meta = ratio::worker::load_checkpoint(ckpt, params);
  return {meta, params};
}

// 20 steps of 2 ranks over Gloo equal 20 steps of 1 rank with the same global batch (4 micro-batches,
// 2 per rank), dropout on: the same losses and parameters to 1e-5 in fp32.
TEST_F(WorkerCli, TwoRanksOverGlooEqualOneRank) {
  if (!ratio_test::kWorkerHasGloo) GTEST_SKIP() << ratio_test::kNoGloo;
  json job = tiny_job();
  job["model"]["dropout"] = 0.1;
  job["train"]["max_iters"] = 21;
  job["train"]["grad_accum"] = 4;
  job["train"]["eval_interval"] = 10;
  job["train"]["checkpoint_interval"] = 20;  // the parameters after 20 steps
  WorkerRun one = run(job, "one", {"--max-threads", "1"});
  ASSERT_EQ(one.exit_code, 0) << one.stderr_text;
  job["train"]["gpus"] = 2;
  WorkerRun two = run(job, "two", {"--max-threads", "1"});
  ASSERT_EQ(two.exit_code, 0) << two.stderr_text;

  EXPECT_EQ(two.events.front()["gpus"], 2);
  EXPECT_EQ((*two.last("finished"))["result"]["gpus"], 2);
  for (const auto& [type, field] : std::vector<std::pair<std::string, std::string>>{
           {"metric", "train_loss"}, {"metric", "grad_norm"}, {"eval", "val_loss"}}) {
    const std::vector<double> a = series(one, type, field), b = series(two, type, field);
    ASSERT_EQ(a.size(), b.size()) << type << " events: rank 0 alone reports";
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5) << type << "." << field << " #" << i;
  }
  const auto [meta, p1] = model_tensors(path("one_work/ckpt.bin"));
  const auto p2 = model_tensors(path("two_work/ckpt.bin")).second;
  ASSERT_EQ(meta["iter"], 20);
  ASSERT_EQ(p1.size(), p2.size());
  ASSERT_GT(p1.size(), 10u);
  for (size_t i = 0; i < p1.size(); ++i) {
    ASSERT_EQ(p1[i].first, p2[i].first);
    EXPECT_LE((p1[i].second - p2[i].second).abs().max().item<double>(), 1e-5) << p1[i].first;
  }
}

// kill -9 of rank 1 ends the run with rank 0's reason (exit 1, retried by ratiod); --resume restarts
// both ranks from rank 0's checkpoint and the metric series has no gap.
TEST_F(WorkerCli, KilledRankEndsTheRunWithAReasonAndTheResumeFillsTheSeries) {
  if (!ratio_test::kWorkerHasGloo) GTEST_SKIP() << ratio_test::kNoGloo;
  json job = tiny_job();
  job["train"]["max_iters"] = 100;
  job["train"]["checkpoint_interval"] = 7;
  job["train"]["gpus"] = 2;
  const std::vector<std::string> args = {"run", "--job", write_job("dp.json", job), "--workdir", path("dp_work"),
                                         "--data-dir", data_dir(), "--max-threads", "1"};
  pid_t pid = start(args, "killed");
  wait_for_checkpoint("killed");
  const std::vector<pid_t> ranks = children_of(pid);
  ASSERT_EQ(ranks.size(), 1u) << "rank 0 starts rank 1";
  ::kill(ranks[0], SIGKILL);
  WorkerRun killed = collect(pid, "killed");
  // Checked first: expect_failure reads the fields of the last event (a missing one is undefined behaviour).
  ASSERT_FALSE(killed.events.empty());
  ASSERT_EQ(killed.events.back()["type"], "failed") << "exit " << killed.exit_code << ": " << killed.stderr_text;
  expect_failure(killed, 1, "rank 1 died: killed by signal 9");
  ASSERT_NE(killed.last("checkpoint"), nullptr);

  WorkerRun resumed = resume(args);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.stderr_text;
  const int64_t from = resumed.events.front()["iter"];
  EXPECT_EQ(from, (*killed.last("checkpoint"))["iter"].get<int64_t>());
  std::set<int64_t> iters;
  for (const WorkerRun* r : {&killed, &resumed})
    for (const json& e : r->events)
      if (e["type"] == "metric" && (r == &resumed || e["iter"].get<int64_t>() < from)) iters.insert(e["iter"].get<int64_t>());
  std::set<int64_t> expected;
  for (int64_t i = 4; i < 100; i += 5) expected.insert(i);  // log_interval 5
  EXPECT_EQ(iters, expected);
}

// A GPT-2 model.safetensors in Hugging Face's layout (Conv1D weights [in, out], causal-mask buffers) for
// tiny_job()'s shape, whose every prediction is the same distribution: blocks and ln_f's weight are
// zero, so the final features are ln_f's bias e_0 and the logits are wte[:, 0] = log p.
void write_unigram_gpt2(const std::string& path, const std::vector<double>& log_p, int64_t n_embd) {
  const int64_t C = n_embd, V = static_cast<int64_t>(log_p.size()), T = 64;
  std::map<std::string, torch::Tensor> t;
  t["wte.weight"] = torch::zeros({V, C});
  for (int64_t v = 0; v < V; ++v) t["wte.weight"][v][0] = log_p[v];
  t["wpe.weight"] = torch::zeros({T, C});
  for (int layer = 0; layer < 2; ++layer) {
    const std::string h = "h." + std::to_string(layer) + ".";
    for (const char* ln : {"ln_1.", "ln_2."}) {
      t[h + ln + "weight"] = torch::ones({C});
      t[h + ln + "bias"] = torch::zeros({C});
    }
    t[h + "attn.bias"] = torch::ones({1, 1, T, T}).tril();  // older exports carry the mask; it is skipped
    t[h + "attn.c_attn.weight"] = torch::zeros({C, 3 * C});
    t[h + "attn.c_attn.bias"] = torch::zeros({3 * C});
    t[h + "attn.c_proj.weight"] = torch::zeros({C, C});
    t[h + "attn.c_proj.bias"] = torch::zeros({C});
    t[h + "mlp.c_fc.weight"] = torch::zeros({C, 4 * C});
    t[h + "mlp.c_fc.bias"] = torch::zeros({4 * C});
    t[h + "mlp.c_proj.weight"] = torch::zeros({4 * C, C});
    t[h + "mlp.c_proj.bias"] = torch::zeros({C});
  }
  t["ln_f.weight"] = torch::zeros({C});
  t["ln_f.bias"] = torch::zeros({C});
  t["ln_f.bias"][0] = 1.0;
  ratio::model::write_safetensors(path, t);
}

TEST_F(WorkerCli, InitFromGpt2SafetensorsLoadsTheWeights) {
  // p puts 51 times more mass on letters and space than on other bytes.
  std::vector<double> log_p(256);
  double z = 0;
  for (int v = 0; v < 256; ++v) z += (v == ' ' || (v >= 'a' && v <= 'z')) ? 51.0 : 1.0;
  for (int v = 0; v < 256; ++v) log_p[v] = std::log(((v == ' ' || (v >= 'a' && v <= 'z')) ? 51.0 : 1.0) / z);
  write_unigram_gpt2(path("gpt2.safetensors"), log_p, 64);
  json job = tiny_job();
  job["train"]["max_iters"] = 1;
  job["train"]["warmup_iters"] = 1;
  job["train"]["init_from"] = path("gpt2.safetensors");
  WorkerRun r = run(job, "init");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_NE(r.stderr_text.find("init_from " + path("gpt2.safetensors") + ": 28 copied, 0 resized, 0 derived, 0 fresh"),
            std::string::npos) << r.stderr_text;

  // The loss of the loaded model at iter 0, before any update: −log p of every target of the fixed
  // validation batches, as the worker draws them.
  const json& tj = job["train"];
  const int B = tj["batch_size"], T = job["model"]["block_size"], batches = tj["eval_batches"];
  const ratio::worker::DatasetFiles files = ratio::worker::resolve_dataset("fortunes", "byte", data_dir());
  const ratio::worker::TokenSplit val(files.val, T + 1);
  const ratio::worker::BatchOrder order{tj["seed"].get<uint64_t>()};
  std::vector<int64_t> x(B * T), y(B * T);
  double nll = 0;
  for (int k = 0; k < batches; ++k) {
    val.fill(order.val_draws(k, B), B, T, 256, x.data(), y.data());
    for (int64_t target : y) nll -= log_p[target];
  }
  const double expected = nll / (static_cast<double>(batches) * B * T);
  ASSERT_GT(std::abs(expected - std::log(256.0)), 0.5) << "p must differ from what a random init predicts";
  std::vector<double> val_losses = series(r, "eval", "val_loss");
  ASSERT_FALSE(val_losses.empty());
  EXPECT_NEAR(val_losses.front(), expected, 1e-4);
}

TEST_F(WorkerCli, InitFromMissingFileIsDataError) {
  json job = tiny_job();
  job["train"]["init_from"] = path("no_such.safetensors");
  expect_failure(run(job, "init_missing"), 3, "train.init_from: " + path("no_such.safetensors") + ": cannot open");
}

TEST_F(WorkerCli, InitFromOtherWidthIsDataError) {
  write_unigram_gpt2(path("narrow.safetensors"), std::vector<double>(256, -std::log(256.0)), 32);
  json job = tiny_job();
  job["train"]["init_from"] = path("narrow.safetensors");
  expect_failure(run(job, "init_narrow"), 3, "n_embd 32 in the file, 64 in the model; set model.n_embd");
}

// Model init depends on the seed alone, so runs that differ only in dropout start from the same weights:
// the iter-0 evaluation (dropout off) agrees to the bit, the training step after it (dropout on) does not.
TEST_F(WorkerCli, EvalTurnsDropoutOffAndTrainingBackOn) {
  std::map<double, WorkerRun> runs;
  for (double dropout : {0.0, 0.5}) {
    json job = tiny_job();
    job["model"]["dropout"] = dropout;
    job["train"]["max_iters"] = 1;
    job["train"]["warmup_iters"] = 1;
    job["train"]["log_interval"] = 1;
    runs[dropout] = run(job, "dropout" + std::to_string(static_cast<int>(dropout * 10)));
    ASSERT_EQ(runs[dropout].exit_code, 0) << runs[dropout].stderr_text;
  }
  EXPECT_EQ(series(runs[0.0], "eval", "val_loss").front(), series(runs[0.5], "eval", "val_loss").front());
  EXPECT_GT(std::abs(series(runs[0.0], "metric", "train_loss").front() - series(runs[0.5], "metric", "train_loss").front()), 1e-3);
  // grad_accum 2: the loss of a step is the mean over its micro-batches, near an untrained model's
  // val loss (about ln 256), not their sum.
  EXPECT_NEAR(series(runs[0.0], "metric", "train_loss").front(), series(runs[0.0], "eval", "val_loss").front(), 0.1);
}

TEST_F(WorkerCli, MissingDatasetIsDataError) {
  json job = tiny_job();
  job["data"]["dataset"] = path("no_such_dataset");
  expect_failure(run(job, "missing"), 3, "no_such_dataset");
}

TEST_F(WorkerCli, CorruptShardIsDataError) {
  fs::create_directories(path("corrupt"));
  ratio::worker::write_shard(path("corrupt/train.bin"), std::vector<uint16_t>(5000, 65));
  ratio::worker::write_shard(path("corrupt/val.bin"), std::vector<uint16_t>(5000, 65));
  fs::resize_file(path("corrupt/train.bin"), 1024 + 2 * 4000);
  json job = tiny_job();
  job["data"]["dataset"] = path("corrupt");
  expect_failure(run(job, "corrupt"), 3, "is corrupt");
}

TEST_F(WorkerCli, VocabSmallerThanTokenizerIsDataError) {
  json job = tiny_job();
  job["model"]["vocab_size"] = 100;
  expect_failure(run(job, "vocab"), 3, "model.vocab_size");
}

TEST_F(WorkerCli, UnknownSpecFieldIsInvalid) {
  json job = tiny_job();
  job["train"]["learning_rate"] = 0.1;
  expect_failure(run(job, "unknown"), 2, "train.learning_rate");
}

TEST_F(WorkerCli, ImpossibleValueIsInvalid) {
  json job = tiny_job();
  job["model"]["n_head"] = 3;  // 64 is not divisible by 3
  WorkerRun r = run(job, "impossible");
  expect_failure(r, 2, "model.");
}

TEST_F(WorkerCli, BadArgumentsAreInvalid) {
  WorkerRun r = collect(start({"run", "--workdir", path("w")}, "args"), "args");
  EXPECT_EQ(r.exit_code, 2);
  ASSERT_FALSE(r.events.empty());
  EXPECT_EQ(r.events.back()["type"], "failed");
  EXPECT_NE(r.stderr_text.find("--job is required"), std::string::npos) << r.stderr_text;
  WorkerRun beat = collect(start({"run", "--job", "j.json", "--workdir", path("w"), "--heartbeat-s", "0"}, "beat"), "beat");
  EXPECT_EQ(beat.exit_code, 2);
  EXPECT_NE(beat.stderr_text.find("--heartbeat-s: needs a positive number"), std::string::npos) << beat.stderr_text;
}

TEST_F(WorkerCli, HelpVersionAndUnknownFlags) {
  WorkerRun help = collect(start({"--help"}, "help"), "help");
  EXPECT_EQ(help.exit_code, 0);
  const std::string top = read_text(path("help.out"));
  for (const char* word : {"run", "prepare", "kv-report", "--version", "RATIO_DATA_DIR", "RATIO_FORTUNES_DIR",
                           "RATIO_GPT2_VOCAB_DIR", "Exit codes"})
    EXPECT_NE(top.find(word), std::string::npos) << word << " in\n" << top;
  const std::map<std::string, std::vector<std::string>> options = {
      {"run", {"--job", "--workdir", "--data-dir", "--report", "--token", "--resume", "--heartbeat-s", "--max-threads"}},
      {"prepare", {"--input", "--out", "--tokenizer", "--val-frac", "--shard-tokens", "--threads"}},
      {"kv-report", {"--contexts"}}};
  for (const auto& [command, flags] : options) {
    WorkerRun sub = collect(start({command, "--help"}, command), command);
    EXPECT_EQ(sub.exit_code, 0) << command;
    EXPECT_TRUE(sub.events.empty()) << "help is not a run: no failed event";
    const std::string text = read_text(path(command + ".out"));
    for (const std::string& flag : flags) EXPECT_NE(text.find(flag), std::string::npos) << flag << " in\n" << text;
  }
  collect(start({"--version"}, "version"), "version");
  const std::string version = read_text(path("version.out"));
  EXPECT_EQ(version.rfind("ratio-worker ", 0), 0u) << version;
  EXPECT_NE(version.find("\nbuild "), std::string::npos) << version;
  WorkerRun bad = collect(start({"kv-report", "--bogus"}, "bogus"), "bogus");
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_EQ(std::count(bad.stderr_text.begin(), bad.stderr_text.end(), '\n'), 1) << bad.stderr_text;
  EXPECT_NE(bad.stderr_text.find("--bogus"), std::string::npos) << bad.stderr_text;
}

// Without --data-dir the worker prepares the fortunes corpus under $RATIO_DATA_DIR.
TEST_F(WorkerCli, DataDirDefaultsToTheEnvironment) {
  json job = tiny_job();
  job["train"]["max_iters"] = 2;
  job["train"]["warmup_iters"] = 1;
  job["train"]["eval_interval"] = 2;
  job["train"]["checkpoint_interval"] = 2;
  job["train"]["grad_norm_interval"] = 2;
  job["train"]["log_interval"] = 1;
  const std::string env_dir = path("env-data");
  WorkerRun r = collect(start({"run", "--job", write_job("env.json", job), "--workdir", path("env_work")}, "env",
                              {{"RATIO_DATA_DIR", env_dir}}),
                        "env");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_TRUE(fs::is_directory(env_dir + "/fortunes-byte")) << env_dir;
}

TEST_F(WorkerCli, NanLossIsDiverged) {
  WorkerRun r = run(tiny_job(), "nan", {}, {{"RATIO_DEBUG_NAN_AT_ITER", "7"}});
  expect_failure(r, 4, "diverged");
  for (const json& e : r.events) EXPECT_NE(e["type"], "checkpoint") << "a diverged model must not be checkpointed";
}

TEST_F(WorkerCli, ReportsEveryEventOverHttp) {
  httplib::Server server;
  std::mutex mu;
  std::vector<json> received;
  std::string auth;
  server.Post("/api/report", [&](const httplib::Request& req, httplib::Response& res) {
    std::lock_guard<std::mutex> lock(mu);
    auth = req.get_header_value("Authorization");
    const json body = json::parse(req.body);
    for (const json& e : body.at("events")) received.push_back(e);
    res.set_content(R"({"accepted": 1})", "application/json");
  });
  const int port = server.bind_to_any_port("127.0.0.1");
  std::thread listener([&] { server.listen_after_bind(); });
  json job = tiny_job();
  job["model"]["ra"] = {{"enabled", true}, {"alpha", 0.3}, {"learnable", true}, {"window", 16}};
  WorkerRun r = run(job, "report", {"--report", "http://127.0.0.1:" + std::to_string(port) + "/api/report", "--token", "s3cret"});
  server.stop();
  listener.join();
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_EQ(auth, "Bearer s3cret");
  ASSERT_EQ(received.size(), r.events.size());
  for (size_t i = 0; i < received.size(); ++i) EXPECT_EQ(received[i].dump(), r.events[i].dump());
  // The learnable RA alpha is reported at every eval, and its gradient norm every grad_norm_interval.
  const json* alphas = r.last("alphas");
  ASSERT_NE(alphas, nullptr);
  EXPECT_TRUE((*alphas)["values"].contains("h.1.attn.ra_alpha")) << alphas->dump();
  const json* grads = r.last("grad_norms");
  ASSERT_NE(grads, nullptr);
  EXPECT_GT((*grads)["values"]["h.1.attn.ra_alpha"].get<double>(), 0.0) << grads->dump();
}

TEST_F(WorkerCli, PrepareWritesGpt2Shards) {
  std::string text = "Hello world";
  for (int i = 0; i < 50; ++i) text += ", and line " + std::to_string(i) + ".\n";
  std::ofstream(path("in.txt")) << text;
  WorkerRun r = collect(start({"prepare", "--input", path("in.txt"), "--out", path("prep"), "--tokenizer", "gpt2",
                         "--val-frac", "0.2", "--threads", "2"}, "prep"), "prep");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  ratio::worker::MappedShard train(path("prep/prep_train_000001.bin"));
  ASSERT_GE(train.size(), 3);
  EXPECT_EQ(train.tokens()[0], 50256);  // <|endoftext|> starts every document
  EXPECT_EQ(train.tokens()[1], 15496);  // "Hello"
  EXPECT_EQ(train.tokens()[2], 995);    // " world"
  EXPECT_TRUE(fs::exists(path("prep/prep_val_000001.bin")));
  EXPECT_EQ(json::parse(std::ifstream(path("prep/meta.json")))["tokenizer"], "gpt2");
  EXPECT_NE(r.stderr_text.find("MB/s"), std::string::npos) << r.stderr_text;

  WorkerRun bad = collect(start({"prepare", "--input", path("in.txt"), "--out", path("prep2"), "--tokenizer", "gpt2",
                           "--shard-tokens", "0"}, "prep2"), "prep2");
  EXPECT_EQ(bad.exit_code, 2) << bad.stderr_text;
  EXPECT_NE(bad.stderr_text.find("--shard-tokens: needs an integer"), std::string::npos) << bad.stderr_text;
}

// ---- the step as a CUDA graph (train.cuda_graph) ------------------------------------------------

namespace {

// Tensors of a ckpt.bin (worker/checkpoint.h's layout) as fp64 CPU tensors, by name.
std::map<std::string, torch::Tensor> read_checkpoint_tensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[8];
  uint64_t header_len = 0;
  in.read(magic, 8);
  in.read(reinterpret_cast<char*>(&header_len), 8);
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  const std::streamoff data_start = in.tellg();
  const json table = json::parse(header)["tensors"];
  std::map<std::string, torch::Tensor> out;
  for (const json& t : table) {
    const std::string dtype = t["dtype"];
    if (dtype != "float32") continue;  // parameters, moments and statistics; masks and buffers aside
    auto tensor = torch::empty(t["shape"].get<std::vector<int64_t>>(), torch::kFloat32);
    in.seekg(data_start + t["offset"].get<std::streamoff>());
    in.read(static_cast<char*>(tensor.data_ptr()), t["bytes"].get<std::streamsize>());
    out[t["name"]] = tensor.to(torch::kFloat64);
  }
  return out;
}

bool cuda_kernels_here() { return torch::cuda::is_available() && ratio::model::fused_kernels_built(); }

void WorkerCli::expect_graph_steps_equal_eager(json job, const std::string& tag, size_t iters, double rel_tol) const {
  std::map<std::string, WorkerRun> runs;
  for (const std::string graph : {"on", "off"}) {
    job["train"]["cuda_graph"] = graph;
    runs[graph] = run(job, tag + "_" + graph);
    ASSERT_EQ(runs[graph].exit_code, 0) << runs[graph].stderr_text;
    const json& result = (*runs[graph].last("finished"))["result"];
    EXPECT_EQ(result["cuda_graph"].get<std::string>().substr(0, 2), graph == "on" ? "on" : "of") << result.dump();
  }
  for (const std::string field : {"train_loss", "grad_norm"}) {
    const std::vector<double> graphed = series(runs["on"], "metric", field), eager = series(runs["off"], "metric", field);
    ASSERT_EQ(graphed.size(), iters);
    ASSERT_EQ(graphed.size(), eager.size());
    for (size_t i = 0; i < eager.size(); ++i)
      EXPECT_NEAR(graphed[i], eager[i], rel_tol * std::abs(eager[i])) << tag << " " << field << " iter " << i;
  }
  auto graphed = read_checkpoint_tensors(path(tag + "_on_work/ckpt.bin"));
  auto eager = read_checkpoint_tensors(path(tag + "_off_work/ckpt.bin"));
  ASSERT_EQ(graphed.size(), eager.size());
  ASSERT_GT(eager.count("spam/spikes"), 0u);
  EXPECT_GE(eager["spam/spikes"].item<double>(), 1.0) << "the window should hold a spike";
  double worst = 0;
  for (const auto& [name, e] : eager) {
    ASSERT_GT(graphed.count(name), 0u) << name;
    const double diff = (graphed[name] - e).abs().max().item<double>();
    worst = std::max(worst, diff / (1e-6 + e.abs().max().item<double>()));
    EXPECT_TRUE(torch::allclose(graphed[name], e, rel_tol, 1e-7)) << tag << " " << name << " differs by " << diff;
  }
  std::cout << tag << ": largest relative difference graph vs eager over " << eager.size() << " tensors: " << worst << "\n";
}

// 21 steps, 20 of them checkpointed, with a window that holds two periodic moment resets and a
// SPAM spike (any z > 0 counts after the first ten norms).
json graph_job(const std::string& dtype) {
  json job = tiny_job();
  job["train"].update({{"device", "cuda"}, {"dtype", dtype}, {"max_iters", 21}, {"checkpoint_interval", 20},
                       {"eval_interval", 1000}, {"log_interval", 1}, {"grad_norm_interval", 5}});
  job["train"]["spam"] = {{"enabled", true}, {"spike_z", 0.0}, {"reset_interval", 8}, {"reset_warmup", 3}};
  return job;
}

}  // namespace

// Twenty steps replayed from one captured graph equal twenty eager steps: every train loss and
// gradient norm, and every parameter, moment and SPAM statistic after them, with two micro-batches
// per step. fp32 and bf16 autocast. Measured on the H200: bit-identical, difference 0.
// (CUDA with the fused kernels only.)
TEST_F(WorkerCli, CudaGraphStepsEqualEagerSteps) {
  if (!cuda_kernels_here()) GTEST_SKIP() << "needs a CUDA device and the fused kernels";
  for (const std::string dtype : {"fp32", "bf16"}) expect_graph_steps_equal_eager(graph_job(dtype), dtype, 21, 1e-5);
}

// The same over 2 ranks on 2 GPUs (NCCL), two micro-batches per rank: each rank replays its forward
// and backward (with the copies into the buckets) as one graph and its optimizer as another, the
// all-reduces running eagerly between them. To 1e-6 relative in fp32: with two ranks every summed
// gradient element is one fp32 addition a + b, the same bits whatever algorithm NCCL picks, and
// the rest of the step is the one-GPU graph above, bit-identical to its eager steps; a difference
// would be a bucket missed or read stale.
TEST_F(WorkerCli, CudaGraphStepsEqualEagerStepsOnTwoRanks) {
  if (!cuda_kernels_here() || torch::cuda::device_count() < 2)
    GTEST_SKIP() << "needs 2 CUDA devices and the fused kernels";
  json job = graph_job("fp32");
  job["train"].update({{"gpus", 2}, {"grad_accum", 4}});
  expect_graph_steps_equal_eager(job, "two_ranks", 21, 1e-6);
  const std::vector<json> graphed = read_events("two_ranks_on");
  ASSERT_FALSE(graphed.empty());
  EXPECT_EQ(graphed.front()["gpus"], 2);
  EXPECT_EQ(graphed.front()["cuda_graph"], "on");
  EXPECT_EQ(graphed.back()["type"], "finished");
  EXPECT_EQ(graphed.back()["result"]["cuda_graph"], "on");
}

// A capture that fails on one rank (rank 1, after its backward was captured) leaves that rank
// training eagerly beside rank 0's replays under `auto`: both issue the same collectives in the
// same order either way, so the losses are an eager run's. Under `on` the job fails, rank 0
// reporting that rank 1 exited.
TEST_F(WorkerCli, CudaGraphCaptureFailureOnOneRankTrainsOnEagerly) {
  if (!cuda_kernels_here() || torch::cuda::device_count() < 2)
    GTEST_SKIP() << "needs 2 CUDA devices and the fused kernels";
  json job = graph_job("fp32");
  job["train"].update({{"gpus", 2}, {"grad_accum", 4}, {"cuda_graph", "auto"}});
  const std::map<std::string, std::string> rank1_fails = {{"RATIO_DEBUG_CAPTURE_FAILS_ON_RANK", "1"}};
  const WorkerRun mixed = run(job, "mixed", {}, rank1_fails);
  ASSERT_EQ(mixed.exit_code, 0) << mixed.stderr_text;
  EXPECT_NE(mixed.stderr_text.find("rank 1's CUDA graph capture failed: RATIO_DEBUG_CAPTURE_FAILS_ON_RANK; "
                                   "training on eagerly"),
            std::string::npos)
      << mixed.stderr_text;

  job["train"]["cuda_graph"] = "off";
  const WorkerRun eager = run(job, "eager");
  ASSERT_EQ(eager.exit_code, 0) << eager.stderr_text;
  const std::vector<double> a = series(mixed, "metric", "train_loss"), b = series(eager, "metric", "train_loss");
  ASSERT_EQ(a.size(), 21u);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-6 * std::abs(b[i])) << "iter " << i;

  job["train"]["cuda_graph"] = "on";
  const WorkerRun on = run(job, "on", {}, rank1_fails);
  EXPECT_EQ(on.exit_code, 1) << on.stderr_text;
  ASSERT_FALSE(on.events.empty());
  EXPECT_EQ(on.events.back()["type"], "failed");
  EXPECT_EQ(on.events.back()["reason"].get<std::string>().rfind("rank 1 exited with code 1", 0), 0u)
      << on.events.back().dump();
  EXPECT_NE(on.stderr_text.find("train.cuda_graph is on, but capture failed: RATIO_DEBUG_CAPTURE_FAILS_ON_RANK"),
            std::string::npos)
      << on.stderr_text;
}

// A graph asked for where none can run is a clear error, not a silent eager run.
TEST_F(WorkerCli, CudaGraphOnWithoutCudaIsInvalid) {
  json job = tiny_job();
  job["train"]["cuda_graph"] = "on";
  WorkerRun r = run(job, "graph_on_cpu");
  expect_failure(r, 2, "train.cuda_graph is on, but the job runs on the CPU; use auto or off");
}
