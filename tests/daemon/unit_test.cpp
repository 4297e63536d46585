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
#include <thread>

#include "daemon/event_bus.h"
#include "daemon/gpu_allocation.h"
#include "daemon/options.h"
#include "daemon/process.h"
#include "daemon/scheduler.h"
#include "daemon/slots.h"

using namespace ratio::daemon;
namespace fs = std::filesystem;

TEST(Options, DefaultsDeriveFromDbAndExecutable) {
  Options o = parse_options({"--db", "/tmp/x/ratio.db"}, "/opt/ratio/bin");
  EXPECT_EQ(o.host, "127.0.0.1");
  EXPECT_EQ(o.port, 8080);
  EXPECT_EQ(o.workdir, "/tmp/x/ratiod-work");
  EXPECT_EQ(o.worker_path, "/opt/ratio/bin/ratio-worker");
  EXPECT_EQ(o.slots, "auto");
}

TEST(Options, ErrorsNameTheFlagAndTheFix) {
  auto message = [](std::vector<std::string> args) {
    try {
      parse_options(args, ".");
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({}).find("--db PATH is required"), std::string::npos);
  EXPECT_NE(message({"--db", "x", "--listen", "localhost"}).find("HOST:PORT"), std::string::npos);
  EXPECT_NE(message({"--db", "x", "--listen", "127.0.0.1:99999"}).find("0..65535"), std::string::npos);
  EXPECT_NE(message({"--db", "x", "--bogus", "1"}).find("unknown flag --bogus"), std::string::npos);
  EXPECT_NE(message({"--db", "x", "--lease-s", "-3"}).find("positive number"), std::string::npos);
  EXPECT_NE(message({"--db", "x", "--listen", "0.0.0.0:8080"}).find("requires --token-file"), std::string::npos);
}

TEST(Options, TokenFileAllowsListeningBeyondLoopback) {
  fs::path token = fs::temp_directory_path() / ("ratio-token-" + std::to_string(getpid()));
  std::ofstream(token) << "0123456789abcdef0123\n";
  Options o = parse_options({"--db", "x", "--listen", "0.0.0.0:9000", "--token-file", token.string()}, ".");
  EXPECT_EQ(o.token, "0123456789abcdef0123");
  EXPECT_EQ(o.port, 9000);
  std::ofstream(token) << "short\n";
  EXPECT_THROW(parse_options({"--db", "x", "--token-file", token.string()}, "."), std::invalid_argument);
  fs::remove(token);
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
