#pragma once
// Helpers for tests that run the real binaries of build/bin: run a command and capture its exit
// code, stdout and stderr.

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace ratio::cli::test {

struct Ran {
  int code = -1;
  std::string out;
  std::string err;
};

// $RATIO_BIN_DIR when set, else the build's bin/ (compiled in by tests/cli/CMakeLists.txt).
inline std::string bin_dir() {
  const char* dir = std::getenv("RATIO_BIN_DIR");
  return dir && *dir ? dir : RATIO_TEST_BIN_DIR;
}

inline std::string shell_quote(const std::string& s) {
  std::string quoted = "'";
  for (char c : s) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

inline std::string slurp(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Runs bin/ratio with args; stderr goes through a temp file so both streams are kept apart.
inline Ran run_ratio(const std::vector<std::string>& args, const std::string& env = "") {
  const std::filesystem::path err_file =
      std::filesystem::temp_directory_path() / ("ratio-cli-test-" + std::to_string(::getpid()) + ".err");
  std::string command = env + " " + shell_quote(bin_dir() + "/ratio");
  for (const std::string& a : args) command += " " + shell_quote(a);
  command += " 2>" + shell_quote(err_file.string());
  Ran ran;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) return ran;
  char buffer[4096];
  size_t n = 0;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) ran.out.append(buffer, n);
  const int status = ::pclose(pipe);
  ran.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  ran.err = slurp(err_file);
  std::filesystem::remove(err_file);
  return ran;
}

// A loopback port nothing listens on right now (bound to port 0, then released).
inline int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

inline std::string last_line(const std::string& text) {
  std::string trimmed = text;
  while (!trimmed.empty() && trimmed.back() == '\n') trimmed.pop_back();
  const size_t nl = trimmed.rfind('\n');
  return nl == std::string::npos ? trimmed : trimmed.substr(nl + 1);
}

}  // namespace ratio::cli::test
