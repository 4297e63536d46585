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
#include "daemon/options.h"
#include "daemon/process.h"
#include "daemon/scheduler.h"
#include "daemon/slots.h"

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
      {"lease-s", "11"}, {"stall-s", "12"}, {"grace-s", "13"}, {"drain", "true"}};
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

TEST(Slots, ShareTheCoresBetweenThem) {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  EXPECT_EQ(parse_slots("cpu:1")[0].threads, cores);
  for (const Slot& slot : parse_slots("cpu:2")) EXPECT_EQ(slot.threads, std::max(1, cores / 2));
  for (const Slot& slot : parse_slots("cpu:" + std::to_string(4 * cores))) EXPECT_EQ(slot.threads, 1);
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

TEST(Process, CapturesBothStreamsAndSplitsStdoutLines) {
  fs::path log = fs::temp_directory_path() / ("ratio-proc-" + std::to_string(getpid()) + ".log");
  int log_fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  Spawned p = spawn_process({"/bin/sh", "-c", "echo one; echo two; echo err >&2; printf tail; exit 3"}, {});
  std::vector<std::string> lines;
  pump_output(p.stdout_fd, p.stderr_fd, log_fd, [&](const std::vector<std::string>& batch) {
    lines.insert(lines.end(), batch.begin(), batch.end());
  });
  close(log_fd);
  ExitStatus exit = wait_exit(p.pid);
  EXPECT_FALSE(exit.signaled);
  EXPECT_EQ(exit.code, 3);
  EXPECT_EQ(lines, (std::vector<std::string>{"one", "two", "tail"}));
  std::ifstream in(log);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("err"), std::string::npos);
  EXPECT_NE(text.find("two"), std::string::npos);
  fs::remove(log);
}

TEST(Process, RunsInItsOwnGroupWithTheGivenEnvironment) {
  Spawned p = spawn_process({"/bin/sh", "-c", "echo $RATIO_TEST_VAR; sleep 30 & wait"}, {{"RATIO_TEST_VAR", "hello"}});
  std::vector<std::string> lines;  // read only after the pump thread joined
  std::atomic<bool> got_output{false};
  std::thread pump([&] {
    int null_fd = open("/dev/null", O_WRONLY);
    pump_output(p.stdout_fd, p.stderr_fd, null_fd, [&](const std::vector<std::string>& b) {
      lines.insert(lines.end(), b.begin(), b.end());
      got_output = true;
    });
    close(null_fd);
  });
  for (int i = 0; i < 250 && !got_output; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(getpgid(p.pid), p.pid);
  EXPECT_TRUE(process_alive_with(p.pid, "sleep 30"));
  EXPECT_FALSE(process_alive_with(p.pid, "not-in-the-command-line"));
  signal_group(p.pid, SIGKILL);  // kills the shell and its `sleep` child, so the pipes close
  ExitStatus exit = wait_exit(p.pid);
  pump.join();
  EXPECT_TRUE(exit.signaled);
  EXPECT_EQ(exit.code, SIGKILL);
  EXPECT_EQ(lines, std::vector<std::string>{"hello"});
  EXPECT_FALSE(process_alive_with(p.pid, "sleep 30"));
}

TEST(Process, MissingExecutableIsAClearError) {
  try {
    spawn_process({"/nonexistent/ratio-worker", "run"}, {});
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

TEST(Scheduler, RecoveryStopsASurvivingProcessAndRequeuesItsJob) {
  fs::path dir = fs::temp_directory_path() / ("ratio-recover-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  struct RemoveAtExit {
    fs::path path;
    ~RemoveAtExit() { fs::remove_all(path); }
  } cleanup{dir};
  const std::string token = "0123456789abcdef0123456789abcdef";
  pid_t survivor = -1;
  {
    WriteQueue writer((dir / "ratio.db").string());
    ratio::db::NewMatrix m;
    m.name = "recover";
    m.source = "name: recover";
    m.expanded = nlohmann::json::object();
    m.jobs.push_back({"0", "baseline", nlohmann::json::object(), "hash", nlohmann::json::object(), 10});
    writer.run([&](ratio::db::Store& s) { return s.create_matrix(m); });
    auto claim = writer.run([&](ratio::db::Store& s) { return s.claim_next_job("cpu:0", token, dir.string()); });
    ASSERT_TRUE(claim);
    // A process left running by a "previous daemon": its command line carries the attempt token.
    // `& wait` keeps the shell (whose command line has the token) alive instead of exec-ing sleep.
    Spawned p = spawn_process({"/bin/sh", "-c", "sleep 60 & wait", token}, {});
    close(p.stdout_fd);
    close(p.stderr_fd);
    survivor = p.pid;
    writer.run([&](ratio::db::Store& s) {
      s.set_attempt_pid(claim->attempt_id, p.pid);
      return 0;
    });
    // posix_spawn returns while exec may still be setting up the new command line: poll for it.
    for (int i = 0; i < 100 && !process_alive_with(survivor, token); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_TRUE(process_alive_with(survivor, token));

    EventBus bus;
    SchedulerConfig config;
    config.slots = parse_slots("cpu:1");
    config.workdir = dir.string();
    config.grace_s = 5;
    Scheduler scheduler(config, writer, bus);
    scheduler.recover();

    ExitStatus exit = wait_exit(survivor);
    EXPECT_TRUE(exit.signaled);
    EXPECT_EQ(exit.code, SIGTERM);
    auto detail = writer.run([](ratio::db::Store& s) { return s.job_detail(1); });
    ASSERT_TRUE(detail);
    EXPECT_EQ((*detail)["attempts"][0]["status"], "lost");
    EXPECT_NE((*detail)["attempts"][0]["reason"].get<std::string>().find("daemon restarted"), std::string::npos);
    EXPECT_EQ((*detail)["job"]["status"], "queued");
    EXPECT_TRUE(writer.run([](ratio::db::Store& s) { return s.running_attempts(); }).empty());
  }
}
