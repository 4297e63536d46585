#pragma once
// The `ratio` commands. Each returns an ExitCode (cli/args.h); results go to `out`, progress and
// diagnostics to `err`. Errors from the daemon arrive as ApiError and are turned into one-liners by run().

#include <iosfwd>

#include "cli/args.h"

namespace ratio::cli {

// Runs a parsed command; never throws. `out_is_tty`/`err_is_tty` select in-place redrawing for --watch.
int run(const Command& cmd, std::ostream& out, std::ostream& err, bool out_is_tty, bool err_is_tty);

}  // namespace ratio::cli
