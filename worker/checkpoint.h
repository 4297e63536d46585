#pragma once
// Checkpoint file (ckpt.bin): everything a resume needs, written atomically (temp file, fsync, rename).
//
// Layout: 8 bytes "RATIOCK1", uint64 little-endian header length, the header (JSON:
// {"meta": {...}, "tensors": [{"name", "dtype", "shape", "offset", "bytes"}]}), then each tensor's
// raw contiguous CPU bytes at its offset (relative to the end of the header). Our own format rather
// than torch::save so it reads the same under LibTorch 1.13 and 2.x and is inspectable with a
// few lines of Python.

#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

#include "worker/optimizer.h"

namespace ratio::worker {

class CheckpointError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

void save_checkpoint(const std::string& path, const nlohmann::json& meta, const NamedTensors& tensors);

// Copies the stored tensors into `into` (same names, shapes and dtypes; any device) and returns the
// meta. Throws CheckpointError naming the file and the first mismatch.
nlohmann::json load_checkpoint(const std::string& path, const NamedTensors& into);

}  // namespace ratio::worker
