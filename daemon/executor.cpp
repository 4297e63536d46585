#include "daemon/executor.h"

#include <cstring>

namespace ratio::daemon {

db::AttemptEnd retry_policy(const ExitStatus& exit) {
  using db::Retry;
  if (exit.signaled) {
    return {"lost", "killed by signal " + std::to_string(exit.code) + " (" + strsignal(exit.code) + ")",
            std::nullopt, Retry::kIfAttemptsLeft};
  }
  switch (exit.code) {
    case 0: return {"succeeded", "", 0, Retry::kNever};
    case 1: return {"failed", "crashed (exit 1)", 1, Retry::kIfAttemptsLeft};
    case 2: return {"failed", "invalid spec or arguments (exit 2)", 2, Retry::kNever};
    case 3: return {"failed", "data error (exit 3)", 3, Retry::kNever};
    case 4: return {"failed", "diverged (exit 4)", 4, Retry::kNever};
    case 5: return {"failed", "out of memory (exit 5)", 5, Retry::kNever};
    case 6: return {"interrupted", "interrupted (exit 6)", 6, Retry::kIfAttemptsLeft};
    default:
      return {"failed", "unexpected exit code " + std::to_string(exit.code), exit.code, Retry::kIfAttemptsLeft};
  }
}

}  // namespace ratio::daemon
