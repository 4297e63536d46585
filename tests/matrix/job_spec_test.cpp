#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "matrix/job_spec.h"

using namespace ratio;
using nlohmann::json;

TEST(JobSpec, RoundTripsThroughJson) {
  JobSpec spec;
  spec.matrix = "m";
  spec.step = "5";
  spec.model.ra.enabled = true;
  spec.model.mlp_latent.tying = "untied";
  spec.train.max_iters = 42;
  spec.train.warmup_iters = 4;
  json j = to_json(spec);
  JobSpec back = job_spec_from_json(j);
  EXPECT_EQ(to_json(back), j);
  EXPECT_EQ(config_hash(back), config_hash(spec));
}

TEST(JobSpec, UnknownKeysAreNamedWithTheirPath) {
  json j = to_json(JobSpec{});
  j["model"]["mla"]["latnt_dim"] = 64;
  try {
    job_spec_from_json(j);
    FAIL() << "accepted an unknown key";
  } catch (const SpecInvalid& e) {
    ASSERT_EQ(e.errors().size(), 1u);
    EXPECT_EQ(e.errors()[0].path, "model.mla.latnt_dim");
    EXPECT_NE(e.errors()[0].message.find("latent_dim"), std::string::npos) << "fix should list known keys";
  }
}

TEST(JobSpec, WrongTypesAndRangesAreAllReported) {
  json j = to_json(JobSpec{});
  j["model"]["n_layer"] = "twelve";
  j["train"]["lr"] = -1.0;
  j["model"]["ra_ct"]["mode"] = "median";
  try {
    job_spec_from_json(j);
    FAIL();
  } catch (const SpecInvalid& e) {
    EXPECT_EQ(e.errors().size(), 3u) << e.what();
  }
}

TEST(JobSpec, CrossFieldChecks) {
  json j = to_json(JobSpec{});
  j["model"]["n_head"] = 7;  // 768 % 7 != 0
  EXPECT_THROW(job_spec_from_json(j), SpecInvalid);
}

TEST(JobSpec, HashIgnoresNamesButNotConfig) {
  JobSpec a, b;
  b.name = "other name";
  b.step = "9";
  EXPECT_EQ(config_hash(a), config_hash(b));
  b.model.mlp_ratio = 5.0;
  EXPECT_NE(config_hash(a), config_hash(b));
}

// How a step is computed (kernels, graph) is not what it computes: a job resumes under either.
TEST(JobSpec, HashIgnoresExecutionChoices) {
  JobSpec a, b;
  b.train.kernels = "reference";
  b.train.cuda_graph = "off";
  EXPECT_EQ(config_hash(a), config_hash(b));
  json j = to_json(a);
  j["train"]["cuda_graph"] = "sometimes";
  try {
    job_spec_from_json(j);
    FAIL() << "train.cuda_graph 'sometimes' was accepted";
  } catch (const SpecInvalid& e) {
    ASSERT_EQ(e.errors().size(), 1u);
    EXPECT_EQ(e.errors()[0].path, "train.cuda_graph");
  }
}

TEST(JobSpec, GpusMustDivideGradAccumAndStayOutOfTheHash) {
  JobSpec a, b;
  b.train.gpus = 2;  // grad_accum 8: four micro-batches per rank
  EXPECT_TRUE(validate(b).empty());
  EXPECT_EQ(config_hash(a), config_hash(b)) << "the same global batch on more devices trains the same model";
  json j = to_json(b);
  j["train"]["gpus"] = 3;
  try {
    job_spec_from_json(j);
    FAIL() << "accepted 3 ranks for 8 micro-batches";
  } catch (const SpecInvalid& e) {
    ASSERT_EQ(e.errors().size(), 1u);
    EXPECT_EQ(e.errors()[0].path, "train.gpus");
    EXPECT_NE(e.errors()[0].message.find("grad_accum 8"), std::string::npos) << e.errors()[0].message;
  }
  j["train"]["gpus"] = 0;
  EXPECT_THROW(job_spec_from_json(j), SpecInvalid);
}

TEST(JobSpec, MlpWidthsOfTheStudy) {
  ModelConfig m;
  for (auto [ratio, hidden] : std::vector<std::pair<double, int>>{
           {4.0, 3072}, {5.0, 3840}, {4.25, 3264}, {3.333, 2560}, {2.667, 2048}}) {
    m.mlp_ratio = ratio;
    EXPECT_EQ(m.mlp_hidden(), hidden) << ratio;
  }
}

#include "matrix/params.h"

TEST(ParamFormula, BaselineIsGpt2_124M) {
  ModelConfig m;  // defaults are GPT-2 124M
  ParamCounts p = param_formula(m);
  EXPECT_EQ(p.total, 124439808);
  EXPECT_EQ(p.added, 0);
  int64_t sum = 0;
  for (const auto& kv : p.by_mechanism) sum += kv.second;
  EXPECT_EQ(sum, p.total);
}
