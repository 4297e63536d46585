// ratio: the command-line client of ratiod (see `ratio --help` and docs/cli.md).
#include <unistd.h>

#include <iostream>

#include "cli/args.h"
#include "cli/commands.h"

int main(int argc, char** argv) {
  using namespace ratio::cli;
  const std::vector<std::string> args(argv + 1, argv + argc);
  Command cmd;
  try {
    cmd = parse_args(args);
  } catch (const UsageError& e) {
    std::cerr << "ratio: " << e.what() << '\n';
    return kUsage;
  }
  return run(cmd, std::cout, std::cerr, isatty(STDOUT_FILENO), isatty(STDERR_FILENO));
}
