#pragma once
// `ratio-worker kv-report`: the model's measured KV-cache bytes next to the formula, per context
// length, for the baseline and the MLA attention of the study's GPT-2 124M. No LibTorch here.

#include <cstdint>
#include <ostream>
#include <vector>

namespace ratio::worker {

// Prints the table to `out`; returns an exit code (docs/job-spec.md).
int kv_report(const std::vector<int64_t>& contexts, std::ostream& out);

}  // namespace ratio::worker
