// ratiod as a service: the binary's --help, --version and usage errors, a --config file, systemd's
// notifications on a fake NOTIFY_SOCKET (ready, watchdog keep-alives, stopping, in that order), and
// SIGHUP reopening --log-file after a rotation.
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>

#include "daemon/options.h"
#include "tests/daemon/daemon_process.h"

using namespace ratio_test;

namespace {

struct Ran {
  int code = -1;
  std::string output;  // stdout and stderr
};

Ran run_ratiod(const std::string& args, const fs::path& dir) {
  const fs::path out = dir / "ratiod-cli.out";
  const int status = std::system(((bin_dir() / "ratiod").string() + " " + args + " > " + out.string() + " 2>&1").c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, read_file(out)};
}

class RatiodService : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("ratiod-service-" + std::to_string(getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }
  fs::path dir_;
};

TEST_F(RatiodService, HelpVersionAndUsageErrors) {
  const Ran help = run_ratiod("--help", dir_);
  EXPECT_EQ(help.code, 0);
  for (const std::string& key : ratio::daemon::config_keys())
    EXPECT_NE(help.output.find("--" + key), std::string::npos) << key << " in\n" << help.output;
  for (const char* word : {"--config", "--version", "RATIO_DATA_DIR", "NOTIFY_SOCKET", "SIGHUP", "Exit codes"})
    EXPECT_NE(help.output.find(word), std::string::npos) << word;

  const Ran version = run_ratiod("--version", dir_);
  EXPECT_EQ(version.code, 0);
  EXPECT_EQ(version.output.rfind("ratiod ", 0), 0u) << version.output;
  EXPECT_NE(version.output.find("\nbuild "), std::string::npos) << version.output;

  const Ran bad = run_ratiod("--db x.db --bogus", dir_);
  EXPECT_EQ(bad.code, 2);
  EXPECT_EQ(bad.output, "ratiod: unknown flag --bogus (ratiod --help lists them)\n");
}

TEST_F(RatiodService, ConfigFileErrorsExitTwoWithLineAndColumn) {
  const fs::path config = dir_ / "ratiod.yaml";
  std::ofstream(config) << "db: " << (dir_ / "ratio.db").string() << "\ngrace-s: -1\n";
  const Ran bad = run_ratiod("--config " + config.string(), dir_);
  EXPECT_EQ(bad.code, 2);
  EXPECT_EQ(bad.output, "ratiod: " + config.string() + ":2:10: grace-s: expects a positive number of seconds, got '-1'\n");
}

// A daemon configured by file, with the file's --listen overridden by a flag.
TEST_F(RatiodService, RunsFromAConfigFile) {
  const fs::path config = dir_ / "ratiod.yaml";
  std::ofstream(config) << "listen: 127.0.0.1:1\nslots: cpu:1\ndrain: true\n";
  Daemon d(dir_, {"--config", config.string()});
  d.start();  // adds --listen 127.0.0.1:0 (the flag wins over the file's port 1, which would fail)
  EXPECT_TRUE(d.get("/api/health")["ok"].get<bool>());
  EXPECT_EQ(d.stop(), 0);
}

// A unix datagram socket standing in for systemd's notification socket.
class FakeNotifySocket {
 public:
  explicit FakeNotifySocket(const fs::path& path) : path_(path) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
      throw std::runtime_error("cannot bind " + path.string());
    timeval timeout{0, 200'000};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  }
  ~FakeNotifySocket() {
    ::close(fd_);
    fs::remove(path_);
  }
  // Every datagram that arrived so far (waits up to 0.2 s for the first).
  std::vector<std::string> drain() {
    std::vector<std::string> messages;
    char buffer[4096];
    for (ssize_t n; (n = ::recv(fd_, buffer, sizeof buffer, 0)) > 0;) {
      messages.emplace_back(buffer, static_cast<size_t>(n));
      timeval quick{0, 1000};
      ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &quick, sizeof quick);
    }
    timeval timeout{0, 200'000};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    return messages;
  }

 private:
  fs::path path_;
  int fd_ = -1;
};

TEST_F(RatiodService, NotifiesReadyThenWatchdogThenStopping) {
  FakeNotifySocket notify(dir_ / "notify.sock");
  ::setenv("NOTIFY_SOCKET", (dir_ / "notify.sock").c_str(), 1);
  ::setenv("WATCHDOG_USEC", "600000", 1);  // keep-alives at least every 0.2 s
  Daemon d(dir_, {"--drain"});
  d.start();  // returns once ratiod printed its listening line
  ::unsetenv("NOTIFY_SOCKET");
  ::unsetenv("WATCHDOG_USEC");

  std::vector<std::string> messages;
  for (int i = 0; i < 50 && std::count(messages.begin(), messages.end(), "WATCHDOG=1") < 3; ++i) {
    const std::vector<std::string> more = notify.drain();
    messages.insert(messages.end(), more.begin(), more.end());
  }
  ASSERT_GE(messages.size(), 4u);
  EXPECT_EQ(messages[0], "READY=1\nSTATUS=listening on http://127.0.0.1:" + std::to_string(d.port()) +
                             "\nMAINPID=" + std::to_string(d.pid()));
  for (size_t i = 1; i < messages.size(); ++i) EXPECT_EQ(messages[i], "WATCHDOG=1") << i;

  EXPECT_EQ(d.stop(), 0);
  const std::vector<std::string> last = notify.drain();
  ASSERT_FALSE(last.empty());
  EXPECT_EQ(last.back().rfind("STOPPING=1\n", 0), 0u) << last.back();
  for (size_t i = 0; i + 1 < last.size(); ++i) EXPECT_EQ(last[i], "WATCHDOG=1");
}

TEST_F(RatiodService, SighupReopensTheLogFile) {
  const fs::path log = dir_ / "ratiod.log";
  Daemon d(dir_, {"--drain", "--log-file", log.string()});
  d.start();
  EXPECT_TRUE(d.wait_for([&] { return read_file(log).find("executor local (cpu:0)") != std::string::npos; }, 10,
                         "the first log line in --log-file"));
  fs::rename(log, dir_ / "ratiod.log.1");  // what logrotate does
  ::kill(d.pid(), SIGHUP);
  EXPECT_TRUE(d.wait_for([&] { return read_file(log).find("reopened the log file") != std::string::npos; }, 10,
                         "the log reopened after SIGHUP"));
  EXPECT_TRUE(d.get("/api/health")["ok"].get<bool>());  // SIGHUP does not stop it
  EXPECT_EQ(d.stop(), 0);
  EXPECT_NE(read_file(log).find("ratiod stopped"), std::string::npos);
  EXPECT_EQ(read_file(dir_ / "ratiod.log.1").find("ratiod stopped"), std::string::npos);
}

}  // namespace
