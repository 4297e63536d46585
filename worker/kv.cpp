#include "worker/kv.h"

#include <cstdio>
#include <iostream>
#include <stdexcept>

#include "model/kv_report.h"
#include "worker/trainer.h"

namespace ratio::worker {

namespace {

std::string mib(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return buf;
}

}  // namespace

int kv_report(const std::vector<int64_t>& contexts, std::ostream& out) {
  const ModelConfig shape;  // the study's GPT-2 124M; MLA latent 128
  model::KvReportOptions options;
  options.contexts = contexts;
  options.device = torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
  std::vector<model::KvReportRow> rows;
  try {
    rows = model::kv_report(shape, options);
  } catch (const std::invalid_argument& e) {
    std::cerr << "ratio-worker: kv-report: " << e.what() << "\n";
    return kExitInvalid;
  }
  out << "KV cache of GPT-2 124M (" << shape.n_layer << " layers, " << shape.n_head << " heads x " << shape.head_dim()
      << ") vs MLA (latent " << shape.mla.latent_dim << "), batch 1, bf16, measured by filling the cache on "
      << options.device.str() << "\n\n";
  out << "| context | standard measured | standard formula | MLA measured | MLA formula | MLA / standard |\n";
  out << "| --- | --- | --- | --- | --- | --- |\n";
  for (const auto& r : rows) {
    char ratio[16];
    std::snprintf(ratio, sizeof(ratio), "%.3f", static_cast<double>(r.mla_bytes_measured) / static_cast<double>(r.standard_bytes_measured));
    out << "| " << r.context << " | " << mib(r.standard_bytes_measured) << " | " << mib(r.standard_bytes_formula) << " | "
        << mib(r.mla_bytes_measured) << " | " << mib(r.mla_bytes_formula) << " | " << ratio << " |\n";
  }
  out << "\nformula: standard 2 x layers x context x heads x head_dim x 2 bytes; MLA 2 x layers x context x latent x 2 bytes\n";
  return kExitDone;
}

}  // namespace ratio::worker
