// DataParallel::first_failure over Gloo: two ranks as two threads of this process, joined through
// one FileStore. (NCCL and the CUDA graph it guards run only in the CUDA tests of cli_test.cpp.)
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <unistd.h>

#include "worker/distributed.h"

namespace fs = std::filesystem;
using ratio::worker::DataParallel;

namespace {

using Verdict = std::pair<int, std::string>;

// Each rank passes its failures[rank][k] to the k-th call; returns what every rank got, by rank.
std::vector<std::vector<Verdict>> decide(const std::vector<std::vector<std::string>>& failures) {
  const std::string rendezvous = (fs::temp_directory_path() / ("ratio_dp_test_" + std::to_string(::getpid()))).string();
  fs::remove(rendezvous);
  const int world = static_cast<int>(failures.size());
  std::vector<std::vector<Verdict>> got(world);
  std::vector<std::string> errors(world);
  std::vector<std::thread> ranks;
  for (int rank = 0; rank < world; ++rank) {
    ranks.emplace_back([&, rank] {
      try {
        DataParallel dp(rendezvous, rank, world, torch::kCPU, std::chrono::seconds(60));
        for (const std::string& failure : failures[rank]) got[rank].push_back(dp.first_failure(failure));
      } catch (const std::exception& e) {
        errors[rank] = e.what();
      }
    });
  }
  for (std::thread& t : ranks) t.join();
  fs::remove(rendezvous);
  for (const std::string& e : errors)
    if (!e.empty()) throw std::runtime_error(e);
  return got;
}

}  // namespace

TEST(DataParallel, FirstFailureIsTheLowestFailingRankAndItsReasonOnEveryRank) {
  std::vector<std::vector<Verdict>> got;
  try {
    got = decide({{"", "", "rank 0 broke"}, {"", "rank 1 broke", "rank 1 broke again"}});
  } catch (const std::runtime_error& e) {
    if (std::string(e.what()).find("without") != std::string::npos) GTEST_SKIP() << e.what();  // no Gloo here
    throw;
  }
  const std::vector<Verdict> expected = {{-1, ""}, {1, "rank 1 broke"}, {0, "rank 0 broke"}};
  EXPECT_EQ(got[0], expected);
  EXPECT_EQ(got[1], expected);
}
