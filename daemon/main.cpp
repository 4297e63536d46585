// ratiod: the RATIO scheduler daemon. Stores matrices in SQLite, runs their jobs as ratio-worker
// processes on GPU or CPU slots or as SLURM jobs, and serves the HTTP API of docs/api.md and the dashboard.

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <thread>

#include <httplib.h>
#include <spdlog/spdlog.h>

#include "daemon/api.h"
#include "daemon/local_executor.h"
#include "daemon/logging.h"
#include "daemon/notify.h"
#include "daemon/options.h"
#include "daemon/scheduler.h"
#include "daemon/slots.h"
#include "daemon/slurm_executor.h"
#include "daemon/store_access.h"

namespace fs = std::filesystem;
using namespace ratio::daemon;

namespace {

// SSE streams each hold a connection thread; the default pool (8) would be exhausted by a few tabs.
constexpr size_t kServerThreads = 64;

// One daemon per database: a second would "recover" (stop) the first one's workers.
// Taken by the signal thread with sigwait; blocked everywhere else.
const sigset_t& handled_signals() {
  static const sigset_t set = [] {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGTERM);
    sigaddset(&s, SIGINT);
    sigaddset(&s, SIGHUP);
    return s;
  }();
  return set;
}

int lock_database(const std::string& db_path) {
  std::string lock_path = db_path + ".lock";
  int fd = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) != 0) {
    throw std::runtime_error("another ratiod is already using " + db_path + " (lock " + lock_path +
                             "); stop it or pass a different --db");
  }
  return fd;  // held until the process exits
}

std::string host_name() {
  char name[256] = {0};
  gethostname(name, sizeof name - 1);
  return name;
}

// The base URL workers report to: --report-url, else --listen (an any-address listen is reached by
// this machine's name from other machines, by loopback from this one).
std::string report_base(const Options& options, int port) {
  if (!options.report_url.empty()) {
    std::string url = options.report_url;
    while (!url.empty() && url.back() == '/') url.pop_back();
    return url;
  }
  std::string host = options.host;
  if (host == "0.0.0.0" || host == "::") host = options.executor == "slurm" ? host_name() : "127.0.0.1";
  return "http://" + host + ":" + std::to_string(port);
}

// SLURM nodes reach ratiod at the report URL: a loopback one works only when every node is this machine.
void check_nodes_reach(const std::string& base) {
  size_t start = base.find("://") + 3;
  size_t end = base.find_first_of(":/", start);
  std::string host = base.substr(start, end == std::string::npos ? std::string::npos : end - start);
  if (!is_loopback(host)) return;
  const std::string me = host_name(), short_me = me.substr(0, me.find('.'));
  for (const auto& [name, addr] : SlurmExecutor::nodes()) {
    if (name == me || name == short_me || is_loopback(addr) || is_loopback(name)) continue;
    throw std::runtime_error("SLURM node " + name + " (" + addr + ") cannot reach ratiod at " + base +
                             ": listen where the nodes reach it (--listen 0.0.0.0:PORT with --token-file) "
                             "or pass --report-url http://HOST:PORT");
  }
}

std::unique_ptr<Executor> make_executor(const Options& options, const std::string& base) {
  if (options.executor == "local") return std::make_unique<LocalExecutor>(parse_slots(options.slots));
  check_nodes_reach(base);
  SlurmConfig slurm;
  slurm.partition = options.slurm_partition;
  slurm.gres = options.slurm_gres;
  slurm.time = options.slurm_time;
  slurm.extra = options.slurm_args;
  return std::make_unique<SlurmExecutor>(slurm);
}

int run(const Options& options, Notifier& notifier) {
  lock_database(options.db_path);
  fs::create_directories(options.workdir);
  WriteQueue writer(options.db_path);
  ReadPool reader(options.db_path);
  EventBus bus;

  httplib::Server server;
  server.new_task_queue = [] { return new httplib::ThreadPool(kServerThreads); };
  // Headers and body go out in separate writes; with Nagle's algorithm the body waits for the
  // client's delayed ACK, adding 40 ms to every answer on a kept-alive connection (the dashboard's).
  server.set_tcp_nodelay(true);
  int port = options.port;
  if (port == 0) {
    port = server.bind_to_any_port(options.host);
  } else if (!server.bind_to_port(options.host, port)) {
    port = -1;
  }
  if (port <= 0) {
    throw std::runtime_error("cannot listen on " + options.host + ":" + std::to_string(options.port) +
                             " (port in use? pick another with --listen HOST:PORT)");
  }

  SchedulerConfig config;
  config.workdir = options.workdir;
  config.data_dir = options.data_dir;
  config.worker_path = options.worker_path;
  config.report_url = report_base(options, port) + "/api/report";
  config.lease_s = options.lease_s;
  config.stall_s = options.stall_s;
  config.grace_s = options.grace_s;
  config.on_pass = [&notifier] { notifier.feed_watchdog(); };
  std::unique_ptr<Executor> executor = make_executor(options, report_base(options, port));
  Scheduler scheduler(config, *executor, writer, bus);
  scheduler.recover();
  scheduler.set_draining(options.drain);

  ApiContext ctx{options, writer, reader, scheduler, bus};
  install_routes(server, ctx);

  std::string slot_names;
  for (const std::string& name : executor->slot_names()) slot_names += (slot_names.empty() ? "" : ",") + name;
  spdlog::info("executor {} ({}); workdir {}; worker {}; workers report to {}", options.executor, slot_names,
               options.workdir, options.worker_path, config.report_url);
  // Tests and scripts read this line to learn the port (with --listen HOST:0).
  const std::string url = "http://" + options.host + ":" + std::to_string(port);
  std::cout << "ratiod listening on " << url << std::endl;
  // The database is open and the port bound (connections wait in its backlog): ready, before the
  // scheduler thread's first watchdog keep-alive.
  notifier.ready("listening on " + url);
  scheduler.start();

  // SIGTERM/SIGINT/SIGHUP are blocked in every thread (set in main) and taken here.
  std::thread signals([&] {
    int sig = 0;
    do {
      sigwait(&handled_signals(), &sig);
      if (sig == SIGHUP) reopen_log();
    } while (sig == SIGHUP);
    spdlog::info("signal {}: interrupting workers (they checkpoint) and shutting down", sig);
    notifier.stopping();
    scheduler.shutdown();
    bus.close();
    server.stop();
  });
  bool listened = server.listen_after_bind();
  if (!listened) kill(getpid(), SIGTERM);  // let the signal thread shut down cleanly
  signals.join();
  spdlog::info("ratiod stopped");
  return listened ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  pthread_sigmask(SIG_BLOCK, &handled_signals(), nullptr);  // inherited by every thread created below
  signal(SIGPIPE, SIG_IGN);                                 // a client hanging up must not kill the daemon
  Notifier notifier;  // before any thread: it edits the environment

  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  std::string exe_dir = ec ? "." : exe.parent_path().string();
  try {
    const Invocation invocation = parse_command_line(std::vector<std::string>(argv + 1, argv + argc), exe_dir);
    if (!invocation.text.empty()) {
      std::cout << invocation.text;
      return 0;
    }
    init_logging(invocation.options.log_file);
    return run(invocation.options, notifier);
  } catch (const std::exception& e) {
    std::cerr << "ratiod: " << e.what() << "\n";
    return 2;
  }
}
