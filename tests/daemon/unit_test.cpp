// Daemon parts that need no server: options, slots, the retry policy, process handling, the bus.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "daemon/event_bus.h"
#include "daemon/gpu_allocation.h"
#include "daemon/local_executor.h"
#include "daemon/options.h"
#include "daemon/process.h"
#include "daemon/scheduler.h"
#include "daemon/slots.h"
#include "daemon/slurm_executor.h"

using namespace ratio::daemon;
namespace fs = std::filesystem;

Options parse_options(const std::vector<std::string>& args, const std::string& exe_dir) {
  return parse_command_line(args, exe_dir).options;
}

std::string error_of(const std::vector<std::string>& args) {
  try {
    parse_command_line(args, ".");
  } catch (const UsageError& e) {
    return e.what();
  }
  return "no error";
}

// A config file in the temp directory, removed with the object.
struct ConfigFile {
  explicit ConfigFile(const std::string& text)
      : path(fs::temp_directory_path() / ("ratiod-config-" + std::to_string(getpid()) + ".yaml")) {
    std::ofstream(path) << text;
  }
  ~ConfigFile() { fs::remove(path); }
  fs::path path;
};

TEST(Options, DefaultsDeriveFromDbAndExecutable) {
  Options o = parse_options({"--db", "/tmp/x/ratio.db"}, "/opt/ratio/bin");
  EXPECT_EQ(o.host, "127.0.0.1");
  EXPECT_EQ(o.port, 8080);
  EXPECT_EQ(o.workdir, "/tmp/x/ratiod-work");
  EXPECT_EQ(o.worker_path, "/opt/ratio/bin/ratio-worker");
  EXPECT_EQ(o.slots, "auto");
}

TEST(Options, ErrorsNameTheFlagAndTheFix) {
  EXPECT_NE(error_of({}).find("--db PATH is required"), std::string::npos);
  EXPECT_NE(error_of({"--db", "x", "--listen", "localhost"}).find("HOST:PORT"), std::string::npos);
  EXPECT_NE(error_of({"--db", "x", "--listen", "127.0.0.1:99999"}).find("0..65535"), std::string::npos);
  EXPECT_EQ(error_of({"--db", "x", "--bogus", "1"}), "unknown flag --bogus (ratiod --help lists them)");
  EXPECT_NE(error_of({"--db", "x", "--lease-s", "-3"}).find("--lease-s: expects a positive number"), std::string::npos);
  EXPECT_NE(error_of({"--db", "x", "--listen", "0.0.0.0:8080"}).find("requires --token-file"), std::string::npos);
  EXPECT_NE(error_of({"--db"}).find("--db"), std::string::npos);
}

TEST(Options, HelpAndVersionAreTextToPrint) {
  const std::string help = parse_command_line({"--help"}, ".").text;
  for (const std::string& key : config_keys()) EXPECT_NE(help.find("--" + key), std::string::npos) << key;
  for (const char* flag : {"--config", "--version", "--help"}) EXPECT_NE(help.find(flag), std::string::npos) << flag;
  const std::string version = parse_command_line({"--db", "x", "--version"}, ".").text;
  EXPECT_EQ(version.rfind("ratiod ", 0), 0u) << version;
  EXPECT_NE(version.find("\nbuild "), std::string::npos) << version;
}

TEST(Options, TokenFileAllowsListeningBeyondLoopback) {
  fs::path token = fs::temp_directory_path() / ("ratio-token-" + std::to_string(getpid()));
  std::ofstream(token) << "0123456789abcdef0123\n";
  Options o = parse_options({"--db", "x", "--listen", "0.0.0.0:9000", "--token-file", token.string()}, ".");
  EXPECT_EQ(o.token, "0123456789abcdef0123");
  EXPECT_EQ(o.port, 9000);
  std::ofstream(token) << "short\n";
  EXPECT_THROW(parse_options({"--db", "x", "--token-file", token.string()}, "."), UsageError);
  fs::remove(token);
}

TEST(Options, SlurmExecutorFlags) {
  Options o = parse_options({"--db", "x", "--executor", "slurm", "--slurm-partition", "gpu", "--slurm-gres", "none",
                             "--slurm-time", "2:00:00", "--slurm-arg", "--account=lab", "--slurm-arg", "--qos=high",
                             "--report-url", "http://head:8080"},
                            ".");
  EXPECT_EQ(o.executor, "slurm");
  EXPECT_EQ(o.slurm_partition, "gpu");
  EXPECT_EQ(o.slurm_gres, "");  // none: ask for no gres
  EXPECT_EQ(o.slurm_time, "2:00:00");
  EXPECT_EQ(o.slurm_args, (std::vector<std::string>{"--account=lab", "--qos=high"}));
  EXPECT_EQ(o.report_url, "http://head:8080");
  EXPECT_EQ(parse_options({"--db", "x"}, ".").slurm_gres, "gpu:1");
  EXPECT_THROW(parse_options({"--db", "x", "--executor", "k8s"}, "."), std::invalid_argument);
  EXPECT_THROW(parse_options({"--db", "x", "--report-url", "head:8080"}, "."), std::invalid_argument);
}

TEST(Options, DataDirDefaultsToTheEnvironment) {
  ::setenv("RATIO_DATA_DIR", "/srv/ratio-data", 1);
  EXPECT_EQ(parse_options({"--db", "x"}, ".").data_dir, "/srv/ratio-data");
  ::unsetenv("RATIO_DATA_DIR");
  EXPECT_EQ(parse_options({"--db", "x", "--data-dir", "/d"}, ".").data_dir, "/d");
}

// Every flag is a key of the config file, under the same name, with the same conversion.
TEST(ConfigFile, EveryFlagIsAKey) {
  fs::path token = fs::temp_directory_path() / ("ratio-config-token-" + std::to_string(getpid()));
  std::ofstream(token) << "0123456789abcdef0123\n";
  const std::map<std::string, std::string> values = {
      {"db", "/tmp/c/ratio.db"}, {"listen", "127.0.0.1:9001"}, {"slots", "cpu:3"}, {"workdir", "/tmp/c/work"},
      {"data-dir", "/tmp/c/data"}, {"allow-path", "[/tmp/c/a, /tmp/c/b]"}, {"worker", "/tmp/c/w"},
      {"token-file", token.string()}, {"web-root", "/tmp/c/web"}, {"log-file", "/tmp/c/ratiod.log"},
      {"lease-s", "11"}, {"stall-s", "12"}, {"grace-s", "13"}, {"drain", "true"}, {"executor", "slurm"},
      {"slurm-partition", "gpu"}, {"slurm-gres", "none"}, {"slurm-time", "1:00:00"},
      {"slurm-arg", "[--account=lab, --qos=high]"}, {"report-url", "http://head:8080"}};
  std::string text;
  for (const std::string& key : config_keys()) {
    ASSERT_TRUE(values.count(key)) << "no value in this test for the new flag --" << key;
    text += key + ": " + values.at(key) + "\n";
  }
  ConfigFile file(text);
  const Options o = parse_options({"--config", file.path.string()}, ".");
  fs::remove(token);
  EXPECT_EQ(o.db_path, "/tmp/c/ratio.db");
  EXPECT_EQ(o.port, 9001);
  EXPECT_EQ(o.slots, "cpu:3");
  EXPECT_EQ(o.workdir, "/tmp/c/work");
  EXPECT_EQ(o.data_dir, "/tmp/c/data");
  EXPECT_EQ(o.allow_paths, (std::vector<std::string>{"/tmp/c/a", "/tmp/c/b"}));
  EXPECT_EQ(o.worker_path, "/tmp/c/w");
  EXPECT_EQ(o.token, "0123456789abcdef0123");
  EXPECT_EQ(o.web_root, "/tmp/c/web");
  EXPECT_EQ(o.log_file, "/tmp/c/ratiod.log");
  EXPECT_DOUBLE_EQ(o.lease_s, 11);
  EXPECT_DOUBLE_EQ(o.stall_s, 12);
  EXPECT_DOUBLE_EQ(o.grace_s, 13);
  EXPECT_TRUE(o.drain);
  EXPECT_EQ(o.executor, "slurm");
  EXPECT_EQ(o.slurm_partition, "gpu");
  EXPECT_EQ(o.slurm_gres, "");
  EXPECT_EQ(o.slurm_time, "1:00:00");
  EXPECT_EQ(o.slurm_args, (std::vector<std::string>{"--account=lab", "--qos=high"}));
  EXPECT_EQ(o.report_url, "http://head:8080");
}

TEST(ConfigFile, FlagsOverrideTheFile) {
  ConfigFile file("db: /tmp/c/file.db\nslots: cpu:2\nlease-s: 30\nallow-path: /tmp/c/from-file\n");
  const Options o = parse_options(
      {"--slots", "cpu:1", "--config", file.path.string(), "--allow-path", "/tmp/c/from-flag"}, ".");
  EXPECT_EQ(o.db_path, "/tmp/c/file.db");  // only in the file
  EXPECT_EQ(o.slots, "cpu:1");
  EXPECT_DOUBLE_EQ(o.lease_s, 30);
  EXPECT_EQ(o.allow_paths, std::vector<std::string>{"/tmp/c/from-flag"});
}

TEST(ConfigFile, BadKeysAndValuesAreLocated) {
  auto error_in = [](const std::string& text) {
    ConfigFile file(text);
    const std::string message = error_of({"--config", file.path.string()});
    const std::string prefix = file.path.string() + ":";
    return message.rfind(prefix, 0) == 0 ? message.substr(prefix.size()) : "(not located) " + message;
  };
  EXPECT_EQ(error_in("db: x\nleese-s: 3\n"),
            "2:1: leese-s: unknown key; the keys are ratiod's flags without -- (ratiod --help)");
  EXPECT_EQ(error_in("db: x\nlease-s: soon\n"), "2:10: lease-s: expects a positive number of seconds, got 'soon'");
  EXPECT_EQ(error_in("db: x\nlisten: nowhere\n"),
            "2:9: listen: --listen expects HOST:PORT (e.g. 127.0.0.1:8080), got 'nowhere'");
  EXPECT_EQ(error_in("db: x\nslots: [cpu:1, cpu:2]\n"), "2:8: slots: expected one value");
  EXPECT_EQ(error_in("db: x\ndb: y\n"), "2:1: db: duplicate key; keep only one");
  EXPECT_EQ(error_in("db: x\nversion: true\n").substr(0, 13), "2:1: version:");
  EXPECT_EQ(error_in("db: [x\n").substr(0, 2), "2:");  // YAML syntax: located too
  EXPECT_NE(error_of({"--config", "/nonexistent/ratiod.yaml"}).find("cannot read '/nonexistent/ratiod.yaml'"),
            std::string::npos);
}

TEST(Slots, ParsesCpuAndGpuLists) {
  auto cpu = parse_slots("cpu:2");
  ASSERT_EQ(cpu.size(), 2u);
  EXPECT_EQ(cpu[1].name, "cpu:1");
  EXPECT_EQ(cpu[1].cuda_devices, "");
  auto gpu = parse_slots("gpu:0,3");
  ASSERT_EQ(gpu.size(), 2u);
  EXPECT_EQ(gpu[1].name, "gpu:3");
  EXPECT_EQ(gpu[1].cuda_devices, "3");
  EXPECT_THROW(parse_slots("cpu:0"), std::invalid_argument);
  EXPECT_THROW(parse_slots("gpu:a"), std::invalid_argument);
  EXPECT_THROW(parse_slots("tpu:1"), std::invalid_argument);
  auto detected = parse_slots("auto");  // this machine's GPUs, else one CPU slot
  EXPECT_EQ(detected.size(), count_gpus() > 0 ? static_cast<size_t>(count_gpus()) : 1u);
}

// A 2-slot machine over time: each tick, jobs that ran their length free their slots, then the
// policy starts what it can. A 1-GPU job arrives every tick for a while, behind a 2-GPU job.
TEST(GpuAllocation, WideJobIsNotStarvedByNarrowOnesAndEveryJobRuns) {
  struct Job {
    int64_t id;
    int gpus;
    int ticks;
    int started = -1;
  };
  std::vector<Job> jobs = {{1, 1, 3}, {2, 2, 2}, {3, 1, 1}, {4, 1, 1}};
  std::vector<bool> busy(2, false);
  std::vector<std::pair<int, std::vector<size_t>>> running;  // (job index, slots)
  std::vector<int> queue = {0, 1, 2, 3};                      // job indices in claim order
  for (int tick = 0; tick < 40 && !(queue.empty() && running.empty()); ++tick) {
    if (tick < 10) {  // the stream of small jobs
      jobs.push_back({static_cast<int64_t>(jobs.size() + 1), 1, 2});
      queue.push_back(static_cast<int>(jobs.size()) - 1);
    }
    for (auto it = running.begin(); it != running.end();) {
      if (tick - jobs[it->first].started < jobs[it->first].ticks) { ++it; continue; }
      for (size_t slot : it->second) busy[slot] = false;
      it = running.erase(it);
    }
    std::vector<WaitingJob> waiting;
    for (int j : queue) waiting.push_back({jobs[j].id, jobs[j].gpus});
    const Allocation a = allocate_slots(busy, waiting);
    EXPECT_TRUE(a.never_fits.empty());
    for (const SlotGrant& grant : a.start) {
      const int j = static_cast<int>(grant.job_id) - 1;
      ASSERT_EQ(grant.slots.size(), static_cast<size_t>(jobs[j].gpus));
      for (size_t slot : grant.slots) {
        ASSERT_FALSE(busy[slot]) << "slot " << slot << " granted twice";
        busy[slot] = true;
      }
      jobs[j].started = tick;
      running.push_back({j, grant.slots});
      queue.erase(std::find(queue.begin(), queue.end(), j));
    }
  }
  for (const Job& job : jobs) EXPECT_GE(job.started, 0) << "job " << job.id << " never ran";
  EXPECT_EQ(jobs[0].started, 0);
  EXPECT_EQ(jobs[1].started, 3) << "the 2-GPU job starts as soon as the job ahead of it ends";
  for (size_t j = 2; j < jobs.size(); ++j) EXPECT_GE(jobs[j].started, 5) << "job " << jobs[j].id << " jumped the 2-GPU job";
}

TEST(GpuAllocation, GrantsTheLowestFreeSlotsAndReportsJobsWiderThanTheMachine) {
  const Allocation a = allocate_slots({true, false, false, false}, {{7, 5}, {8, 2}, {9, 1}, {10, 1}});
  EXPECT_EQ(a.never_fits, std::vector<int64_t>{7});
  ASSERT_EQ(a.start.size(), 2u);
  EXPECT_EQ(a.start[0].job_id, 8);
  EXPECT_EQ(a.start[0].slots, (std::vector<size_t>{1, 2}));
  EXPECT_EQ(a.start[1].job_id, 9);
  EXPECT_EQ(a.start[1].slots, std::vector<size_t>{3});
  EXPECT_TRUE(allocate_slots({true, true}, {{1, 1}}).start.empty());
}

TEST(Slots, SeveralSlotsOfOneJobShowAsOne) {
  const Slot two = combine_slots(parse_slots("gpu:1,3"));
  EXPECT_EQ(two.name, "gpu:1,3");
  EXPECT_EQ(two.cuda_devices, "1,3");
  const Slot cpu = combine_slots(parse_slots("cpu:2"));
  EXPECT_EQ(cpu.name, "cpu:0,1");
  EXPECT_EQ(cpu.cuda_devices, "");
  EXPECT_EQ(cpu.threads, parse_slots("cpu:2")[0].threads) << "a cap per rank";
  EXPECT_EQ(combined_slot_names(two.name), (std::vector<std::string>{"gpu:1", "gpu:3"}));
  EXPECT_EQ(combined_slot_names(cpu.name), (std::vector<std::string>{"cpu:0", "cpu:1"}));
  EXPECT_EQ(combined_slot_names("gpu:2"), (std::vector<std::string>{"gpu:2"}));
}

TEST(Slots, ShareTheCoresBetweenThem) {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  EXPECT_EQ(parse_slots("cpu:1")[0].threads, cores);
  for (const Slot& slot : parse_slots("cpu:2")) EXPECT_EQ(slot.threads, std::max(1, cores / 2));
  for (const Slot& slot : parse_slots("cpu:" + std::to_string(4 * cores))) EXPECT_EQ(slot.threads, 1);
}

// SLURM's end states (scontrol's JobState, ExitCode) become our reasons and retry rules.
TEST(SlurmEnd, MapsEndStatesToReasonsAndRetries) {
  using ratio::db::Retry;
  EXPECT_EQ(slurm_end("COMPLETED", "0:0", "None").status, "succeeded");
  EXPECT_EQ(slurm_end("FAILED", "4:0", "NonZeroExitCode").reason, "diverged (exit 4)");
  EXPECT_EQ(slurm_end("FAILED", "6:0", "NonZeroExitCode").status, "interrupted");  // checkpointed on TERM
  EXPECT_EQ(slurm_end("FAILED", "0:9", "").status, "lost");                        // killed by SIGKILL
  for (const char* retried : {"PREEMPTED", "NODE_FAIL", "TIMEOUT", "CANCELLED"}) {
    EXPECT_NE(slurm_end(retried, "0:15", "").retry, Retry::kNever) << retried;
  }
  EXPECT_EQ(slurm_end("PREEMPTED", "0:15", "").retry, Retry::kAlways);  // never the job's fault
  auto oom = slurm_end("OUT_OF_MEMORY", "0:125", "");
  EXPECT_EQ(oom.status, "failed");
  EXPECT_EQ(oom.retry, Retry::kNever);
  EXPECT_NE(oom.reason.find("out of memory"), std::string::npos);
  EXPECT_NE(slurm_end("CANCELLED", "0:15", "").reason.find("scancel"), std::string::npos);
  EXPECT_EQ(slurm_job_name(12, 3), "ratio-12-3");
  EXPECT_EQ(shell_quote("it's /a b"), "'it'\\''s /a b'");
}

TEST(RetryPolicy, FollowsTheExitCodesOfTheJobContract) {
  using ratio::db::Retry;
  EXPECT_EQ(retry_policy({false, 0}).status, "succeeded");
  EXPECT_EQ(retry_policy({false, 1}).retry, Retry::kIfAttemptsLeft);  // crashed
  for (int never : {2, 3, 4, 5}) {
    EXPECT_EQ(retry_policy({false, never}).retry, Retry::kNever) << never;
    EXPECT_EQ(retry_policy({false, never}).status, "failed");
  }
  EXPECT_EQ(retry_policy({false, 3}).reason, "data error (exit 3)");
  EXPECT_EQ(retry_policy({false, 6}).status, "interrupted");
  EXPECT_EQ(retry_policy({false, 6}).retry, Retry::kIfAttemptsLeft);
  auto killed = retry_policy({true, SIGKILL});
  EXPECT_EQ(killed.status, "lost");
  EXPECT_EQ(killed.retry, Retry::kIfAttemptsLeft);
  EXPECT_FALSE(killed.exit_code);
}

TEST(Process, AppendsBothStreamsToTheOutputFile) {
  fs::path log = fs::temp_directory_path() / ("ratio-proc-" + std::to_string(getpid()) + ".log");
  std::ofstream(log) << "earlier attempt\n";
  pid_t pid = spawn_process({"/bin/sh", "-c", "echo one; echo err >&2; exit 3"}, {}, log.string());
  ExitStatus exit = wait_exit(pid);
  EXPECT_FALSE(exit.signaled);
  EXPECT_EQ(exit.code, 3);
  std::ifstream in(log);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "earlier attempt\none\nerr\n");
  fs::remove(log);
}

TEST(Process, RunsInItsOwnGroupWithTheGivenEnvironment) {
  fs::path log = fs::temp_directory_path() / ("ratio-group-" + std::to_string(getpid()) + ".log");
  pid_t pid = spawn_process({"/bin/sh", "-c", "echo $RATIO_TEST_VAR; sleep 30 & wait"}, {{"RATIO_TEST_VAR", "hello"}},
                            log.string());
  auto output = [&] {
    std::ifstream in(log);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  for (int i = 0; i < 250 && output().empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(getpgid(pid), pid);
  EXPECT_TRUE(process_alive_with(pid, "sleep 30"));
  EXPECT_FALSE(process_alive_with(pid, "not-in-the-command-line"));
  EXPECT_FALSE(try_wait(pid));  // still running
  signal_group(pid, SIGKILL);  // kills the shell and its `sleep` child
  ExitStatus exit = wait_exit(pid);
  EXPECT_TRUE(exit.signaled);
  EXPECT_EQ(exit.code, SIGKILL);
  EXPECT_FALSE(process_alive_with(pid, "sleep 30"));
  EXPECT_EQ(output(), "hello\n");
  fs::remove(log);
}

TEST(Process, RunCommandCapturesOutputAndExitCode) {
  CommandResult r = run_command({"sh", "-c", "echo out; echo err >&2; exit 4"});
  EXPECT_EQ(r.out, "out\n");
  EXPECT_EQ(r.err, "err\n");
  EXPECT_FALSE(r.exit.signaled);
  EXPECT_EQ(r.exit.code, 4);
  EXPECT_THROW(run_command({"/nonexistent/sbatch"}), std::runtime_error);
}

TEST(Process, MissingExecutableIsAClearError) {
  try {
    spawn_process({"/nonexistent/ratio-worker", "run"}, {}, "/dev/null");
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("--worker PATH"), std::string::npos);
  }
}

TEST(EventBus, FansOutToEverySubscriberAndFormatsSse) {
  EventBus bus;
  auto a = bus.subscribe();
  auto b = bus.subscribe();
  bus.publish("job", {{"id", 7}});
  EXPECT_EQ(a->next(1)->data["id"], 7);
  auto from_b = b->next(1);
  ASSERT_TRUE(from_b);
  EXPECT_EQ(format_sse(*from_b), "id: " + from_b->id + "\nevent: job\ndata: {\"id\":7}\n\n");
  EXPECT_FALSE(a->next(0.01));  // nothing more
  bus.unsubscribe(b);
  EXPECT_EQ(bus.subscribers(), 1u);
  bus.close();
  EXPECT_TRUE(a->closed());
}

TEST(EventBus, ASubscriberThatFellBehindIsToldToResync) {
  EventBus bus;
  auto slow = bus.subscribe();
  auto fast = bus.subscribe();
  const size_t extra = 5;
  for (size_t i = 0; i < EventBus::kMaxQueued + extra; ++i) {
    bus.publish("metric", {{"iter", i}});
    if (i == 0) {  // fast reads as it goes, then stops reading
      EXPECT_EQ(fast->next(1)->data["iter"], 0);
    }
  }
  // slow never read: the oldest `extra` events are gone, and the first thing it hears says so.
  auto resync = slow->next(1);
  ASSERT_TRUE(resync);
  EXPECT_EQ(format_sse(*resync), "event: resync\ndata: {\"dropped\":5}\n\n");
  for (size_t i = extra; i < EventBus::kMaxQueued + extra; ++i) {
    auto event = slow->next(1);
    ASSERT_TRUE(event);
    ASSERT_EQ(event->type, "metric");
    ASSERT_EQ(event->data["iter"], i);
  }
  EXPECT_FALSE(slow->next(0.01));  // one resync per loss, not one per event

  // fast read the first event before its queue filled: it lost only what came after the limit.
  auto fast_first = fast->next(1);
  ASSERT_TRUE(fast_first);
  EXPECT_EQ(fast_first->type, "resync");
  EXPECT_EQ(fast_first->data["dropped"], extra - 1);
  EXPECT_EQ(fast->next(1)->data["iter"], extra);

  // A subscriber that keeps up never gets a resync.
  auto steady = bus.subscribe();
  for (int i = 0; i < 3 * static_cast<int>(EventBus::kMaxQueued); ++i) {
    bus.publish("job", {{"id", i}});
    auto event = steady->next(1);
    ASSERT_TRUE(event);
    ASSERT_EQ(event->type, "job");
  }
}

TEST(EventBus, AReconnectingClientGetsWhatItMissedOrAResync) {
  EventBus bus;
  auto first = bus.subscribe();
  bus.publish("job", {{"id", 1}});
  const std::string seen = first->next(1)->id;
  bus.unsubscribe(first);  // the connection drops; two events go by
  bus.publish("job", {{"id", 2}});
  bus.publish("metric", {{"iter", 10}});

  auto back = bus.subscribe(seen);
  EXPECT_EQ(back->next(1)->data["id"], 2);
  EXPECT_EQ(back->next(1)->data["iter"], 10);
  bus.publish("job", {{"id", 3}});  // and then live events, none twice
  EXPECT_EQ(back->next(1)->data["id"], 3);
  EXPECT_FALSE(back->next(0.01));

  // Beyond the replay buffer, and with an id from another daemon run: a resync.
  for (size_t i = 0; i < EventBus::kReplay + 4; ++i) bus.publish("metric", {{"iter", i}});
  auto late = bus.subscribe(seen);
  auto resync = late->next(1);
  ASSERT_TRUE(resync);
  EXPECT_EQ(resync->type, "resync");
  EXPECT_EQ(resync->data["dropped"], 7);  // events 2 .. 8 are gone (1 was seen)
  EXPECT_EQ(bus.subscribe("12345-1")->next(1)->type, "resync");
  EXPECT_EQ(bus.subscribe("garbage")->next(1)->type, "resync");
}

// A worker that outlived its daemon (kill -9) is adopted, not stopped: the restarted daemon follows it
// by pid and token, reads its log, and when it exits ends the attempt by what it reported.
TEST(Scheduler, RecoveryAdoptsASurvivingWorkerAndEndsItByWhatItReported) {
  fs::path dir = fs::temp_directory_path() / ("ratio-recover-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  struct RemoveAtExit {
    fs::path path;
    ~RemoveAtExit() { fs::remove_all(path); }
  } cleanup{dir};
  const std::string token = "0123456789abcdef0123456789abcdef";
  WriteQueue writer((dir / "ratio.db").string());
  ratio::db::NewMatrix m;
  m.name = "recover";
  m.source = "name: recover";
  m.expanded = nlohmann::json::object();
  m.jobs.push_back({"0", "baseline", nlohmann::json::object(), "hash", nlohmann::json::object(), 10});
  writer.run([&](ratio::db::Store& s) { return s.create_matrix(m); });
  auto claim = writer.run([&](ratio::db::Store& s) { return s.claim_next_job("cpu:0", token, dir.string()); });
  ASSERT_TRUE(claim);
  fs::create_directories(fs::path(claim->log_path).parent_path());
  // A "worker" left running by a previous daemon: its command line carries the attempt token, and it
  // reports a divergence on stdout (its log) before it exits. `& wait` keeps the shell alive.
  const std::string failed = R"({"type":"failed","seq":0,"reason":"loss is NaN","exit_code":4})";
  pid_t survivor = spawn_process({"/bin/sh", "-c", "echo '" + failed + "'; sleep 60 & wait", token}, {}, claim->log_path);
  writer.run([&](ratio::db::Store& s) {
    s.set_attempt_pid(claim->attempt_id, survivor);
    return 0;
  });
  // posix_spawn returns while exec may still be setting up the new command line: poll for it.
  for (int i = 0; i < 100 && !process_alive_with(survivor, token); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(process_alive_with(survivor, token));

  EventBus bus;
  SchedulerConfig config;
  config.workdir = dir.string();
  config.grace_s = 5;
  LocalExecutor executor(parse_slots("cpu:1"));
  Scheduler scheduler(config, executor, writer, bus);
  scheduler.recover();
  scheduler.start();
  auto attempt = [&] { return (*writer.run([](ratio::db::Store& s) { return s.job_detail(1); }))["attempts"][0]; };
  std::this_thread::sleep_for(std::chrono::seconds(1));
  EXPECT_TRUE(process_alive_with(survivor, token)) << "an adopted worker is not stopped";
  EXPECT_EQ(attempt()["status"], "running");

  signal_group(survivor, SIGKILL);
  wait_exit(survivor);  // (the test spawned it, so the test reaps it)
  for (int i = 0; i < 100 && attempt()["status"] == "running"; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  scheduler.shutdown();
  nlohmann::json ended = attempt();
  EXPECT_EQ(ended["status"], "failed") << ended;
  EXPECT_NE(ended["reason"].get<std::string>().find("diverged (exit 4)"), std::string::npos) << ended;
  EXPECT_EQ(ended["exit_code"], 4);
}
