#pragma once
// A real one-node SLURM cluster on localhost for the SLURM executor's tests: a private munged (its
// own key and socket), slurmctld and slurmd on free ports, state under a temporary folder. The
// recipe is ../shared/spec/slurm.md's; SLURM_CONF is set for this process and its children (ratiod,
// and the sbatch/squeue/scancel it runs). Stopped by the pids in their pid files, after every job of
// the cluster is cancelled, so no worker outlives the test.

#include <gtest/gtest.h>

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "daemon/process.h"
#include "tests/daemon/daemon_process.h"

namespace ratio_test {

// Empty when every SLURM binary the cluster needs is installed (scripts/setup.sh installs them).
inline std::string missing_slurm_binaries() {
  std::string missing;
  for (const char* path : {"/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/sbatch",
                           "/usr/bin/squeue", "/usr/bin/scontrol", "/usr/bin/scancel", "/usr/bin/sinfo"}) {
    if (!fs::exists(path)) missing += std::string(missing.empty() ? "" : ", ") + path;
  }
  return missing;
}

inline int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

class SlurmCluster {
 public:
  explicit SlurmCluster(fs::path dir) : dir_(std::move(dir)) {}
  ~SlurmCluster() { stop(); }

  // Throws std::runtime_error with the daemons' logs when the cluster does not come up.
  void start() {
    for (const char* sub : {"state", "spool", "log"}) fs::create_directories(dir_ / sub);
    write_key();
    run({"/usr/sbin/munged", "--force", "-S", (dir_ / "munge.sock").string(), "--key-file=" + (dir_ / "munge.key").string(),
         "--log-file=" + (dir_ / "log/munged.log").string(), "--pid-file=" + (dir_ / "munged.pid").string(),
         "--seed-file=" + (dir_ / "munged.seed").string()});
    write_conf();
    ::setenv("SLURM_CONF", (dir_ / "slurm.conf").c_str(), 1);
    run({"/usr/sbin/slurmctld", "-f", (dir_ / "slurm.conf").string()});
    run({"/usr/sbin/slurmd", "-f", (dir_ / "slurm.conf").string()});
    // Up when sinfo shows the node idle (slurmd registered).
    for (int i = 0; i < 120; ++i) {
      auto r = ratio::daemon::run_command({"sinfo", "-h", "-o", "%t"});
      if (r.exit.code == 0 && r.out.find("idle") != std::string::npos) return;
      sleep_s(0.25);
    }
    throw std::runtime_error("the SLURM cluster did not come up:\n" + logs());
  }

  void stop() {
    if (stopped_) return;
    stopped_ = true;
    ratio::daemon::run_command({"scancel", "--user=root", "--signal=KILL", "--full"});
    ratio::daemon::run_command({"scancel", "--user=root"});
    for (int i = 0; i < 40; ++i) {
      auto r = ratio::daemon::run_command({"squeue", "-h"});
      if (r.exit.code != 0 || r.out.empty()) break;
      sleep_s(0.25);
    }
    for (const char* pid_file : {"slurmd.pid", "slurmctld.pid", "munged.pid"}) stop_daemon(dir_ / pid_file);
    ::unsetenv("SLURM_CONF");
  }

  // The daemons' logs, for failure messages.
  std::string logs() const {
    std::string out;
    for (const char* log : {"log/slurmctld.log", "log/slurmd.log", "log/munged.log"}) {
      std::string text = read_file(dir_ / log);
      out += std::string("--- ") + log + "\n" + text.substr(text.size() > 3000 ? text.size() - 3000 : 0);
    }
    return out;
  }

 private:
  static void run(const std::vector<std::string>& argv) {
    auto r = ratio::daemon::run_command(argv);
    if (r.exit.signaled || r.exit.code != 0) throw std::runtime_error(argv[0] + " failed: " + r.err + r.out);
  }

  void write_key() {
    std::string key(1024, '\0');
    std::ifstream("/dev/urandom", std::ios::binary).read(key.data(), static_cast<std::streamsize>(key.size()));
    std::ofstream(dir_ / "munge.key", std::ios::binary) << key;
    fs::permissions(dir_ / "munge.key", fs::perms::owner_read);
  }

  void write_conf() {
    char host[256] = {0};
    gethostname(host, sizeof host - 1);
    std::string name = std::string(host).substr(0, std::string(host).find('.'));
    std::ofstream conf(dir_ / "slurm.conf");
    conf << "ClusterName=ratio-test\n"
         << "SlurmctldHost=" << name << "(127.0.0.1)\n"
         << "SlurmUser=root\nSlurmdUser=root\n"
         << "SlurmctldPort=" << free_port() << "\nSlurmdPort=" << free_port() << "\n"
         << "AuthType=auth/munge\nAuthInfo=socket=" << (dir_ / "munge.sock").string() << "\n"
         << "StateSaveLocation=" << (dir_ / "state").string() << "\n"
         << "SlurmdSpoolDir=" << (dir_ / "spool").string() << "\n"
         << "SlurmctldPidFile=" << (dir_ / "slurmctld.pid").string() << "\n"
         << "SlurmdPidFile=" << (dir_ / "slurmd.pid").string() << "\n"
         << "SlurmctldLogFile=" << (dir_ / "log/slurmctld.log").string() << "\n"
         << "SlurmdLogFile=" << (dir_ / "log/slurmd.log").string() << "\n"
         << "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\n"
         << "AccountingStorageType=accounting_storage/none\nSelectType=select/cons_tres\n"
         << "SelectTypeParameters=CR_Core\nReturnToService=2\nMpiDefault=none\n"
         // Quick turnover for tests: the scheduler looks often, a cancelled job is killed soon.
         << "SchedulerParameters=sched_interval=1\nKillWait=5\n"
         << "NodeName=" << name << " NodeAddr=127.0.0.1 CPUs=" << std::thread::hardware_concurrency()
         << " RealMemory=1024 State=UNKNOWN\n"
         << "PartitionName=debug Nodes=" << name << " Default=YES MaxTime=INFINITE State=UP\n";
  }

  static void stop_daemon(const fs::path& pid_file) {
    std::ifstream in(pid_file);
    pid_t pid = 0;
    if (!(in >> pid) || pid <= 0) return;
    kill(pid, SIGTERM);
    for (int i = 0; i < 100 && kill(pid, 0) == 0; ++i) sleep_s(0.1);
    if (kill(pid, 0) == 0) kill(pid, SIGKILL);
  }

  fs::path dir_;
  bool stopped_ = false;
};

}  // namespace ratio_test
