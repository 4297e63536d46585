// The KV-cache report: measured bytes of really filled caches equal the formula, and the spec's
// GPT-2 figures (36 MB standard vs 6.3 MB MLA at 1024 tokens, 2-byte elements).

#include <gtest/gtest.h>

#include "model/kv_report.h"
#include "tests/model/support.h"

namespace ratio::model::testing {
namespace {

TEST(KvReport, MeasuredEqualsFormulaOnATinyModel) {
  auto c = tiny();
  KvReportOptions options;
  options.contexts = {5, 12, 40};
  options.prefill_chunk = 7;
  options.batch = 2;
  for (auto dtype : {torch::kBFloat16, torch::kFloat16, torch::kFloat32}) {
    options.cache_dtype = dtype;
    const auto rows = kv_report(c, options);
    ASSERT_EQ(rows.size(), 3u);
    const int64_t e = torch::elementSize(dtype);
    for (const auto& r : rows) {
      EXPECT_EQ(r.standard_bytes_measured, r.standard_bytes_formula);
      EXPECT_EQ(r.mla_bytes_measured, r.mla_bytes_formula);
      EXPECT_EQ(r.standard_bytes_formula, 3 * 2 * 2 * r.context * 16 * e);  // layers, k+v, batch, C
      EXPECT_EQ(r.mla_bytes_formula, 3 * 2 * 2 * r.context * 8 * e);       // latent 8
    }
  }
}

TEST(KvReport, Gpt2FiguresOfTheSpec) {
  ModelConfig gpt2;  // 12 layers, 12 heads, D 64, latent 128
  EXPECT_EQ(standard_cache_bytes(gpt2, 1024, 1, 2), 37'748'736);  // 36 MiB
  EXPECT_EQ(mla_cache_bytes(gpt2, 1024, 1, 2), 6'291'456);        // 6.3 MB
  // Measured at full GPT-2 shape (a small vocabulary keeps it quick on a CPU; caches do not depend on it).
  gpt2.vocab_size = 256;
  KvReportOptions options;
  options.contexts = {1024};
  options.prefill_chunk = 512;
  const auto rows = kv_report(gpt2, options);
  EXPECT_EQ(rows[0].standard_bytes_measured, 37'748'736);
  EXPECT_EQ(rows[0].mla_bytes_measured, 6'291'456);
}

TEST(KvReport, BadOptionsAreClearErrors) {
  KvReportOptions options;
  options.contexts = {64, 32};
  EXPECT_THROW(kv_report(tiny(), options), std::invalid_argument);
}

}  // namespace
}  // namespace ratio::model::testing
