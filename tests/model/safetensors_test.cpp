// safetensors I/O: a Hugging Face GPT-2-shaped file written here loads exactly; our checkpoints
// round-trip; wider MLPs and MLA are initialised from the pretrained tensors; bad files are clear errors.

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <set>

#include "model/safetensors.h"
#include "tests/model/support.h"

namespace ratio::model::testing {
namespace {

class TempFile {
 public:
  explicit TempFile(const std::string& name) : path_(::testing::TempDir() + "ratio_" + name + ".safetensors") {}
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

bool is_conv1d(const std::string& n) {
  for (const char* s : {"attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"}) {
    if (n.find(s) != std::string::npos) return true;
  }
  return false;
}

// The tensors of a baseline model as Hugging Face stores them: Conv1D weights [in, out], an optional
// "transformer." prefix and the causal-mask buffers of older exports.
std::map<std::string, torch::Tensor> as_hf(GPT& model, const std::string& prefix, torch::ScalarType dtype) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : model->named_parameters()) {
    auto t = is_conv1d(p.key()) ? p.value().t().contiguous() : p.value();
    out[prefix + p.key()] = t.detach().to(dtype);
  }
  const int64_t T = model->config().block_size;
  out[prefix + "h.0.attn.bias"] = torch::ones({1, 1, T, T}).tril().to(dtype);
  return out;
}

// A baseline with non-zero biases everywhere (GPT-2 init zeroes them, which would hide mistakes).
GPT pretrained_baseline(const ModelConfig& c) {
  auto model = make_model(c, 11);
  torch::NoGradGuard no_grad;
  for (auto& p : model->named_parameters()) {
    if (p.key().find("bias") != std::string::npos) p.value().normal_(0.0, 0.1);
  }
  return model;
}

// A model of `config` (seed 5) initialised from `source` saved as a Hugging Face file.
struct Loaded {
  GPT model;
  PretrainedLoad report;
};
Loaded load_pretrained(GPT& source, const ModelConfig& config) {
  TempFile file("pretrained");
  write_safetensors(file.path(), as_hf(source, "", torch::kFloat32));
  auto model = make_model(config, 5);
  auto report = load_hf_gpt2(*model, file.path());
  return {model, report};
}

ModelConfig with_mla(ModelConfig c, int latent_dim) {
  c.mla.enabled = true;
  c.mla.latent_dim = latent_dim;
  return c;
}

TEST(Safetensors, HuggingFaceBaselineLoadsExactly) {
  const auto c = tiny();
  auto source = pretrained_baseline(c);
  auto idx = random_tokens(c, 2, 9, 3);
  auto expected = source->forward(idx).logits.detach();
  for (const std::string prefix : {"", "transformer."}) {
    TempFile file("hf" + prefix);
    write_safetensors(file.path(), as_hf(source, prefix, torch::kFloat32), {{"format", "pt"}});
    auto model = make_model(c, 99);
    auto report = load_hf_gpt2(*model, file.path());
    EXPECT_EQ(report.copied.size(), model->named_parameters().size());
    EXPECT_TRUE(report.fresh.empty());
    EXPECT_EQ(max_abs_diff(model->forward(idx).logits, expected), 0.0) << prefix;
  }
}

TEST(Safetensors, HalfPrecisionFilesLoad) {
  const auto c = tiny();
  auto source = pretrained_baseline(c);
  for (auto dtype : {torch::kBFloat16, torch::kFloat16}) {
    TempFile file("half");
    write_safetensors(file.path(), as_hf(source, "", dtype));
    auto contents = read_safetensors(file.path());
    EXPECT_EQ(contents.tensors.at("wte.weight").scalar_type(), dtype);
    auto model = make_model(c, 99);
    load_hf_gpt2(*model, file.path());
    auto expected = source->named_parameters()["h.1.mlp.c_fc.weight"].to(dtype).to(torch::kFloat32);
    EXPECT_EQ(max_abs_diff(model->named_parameters()["h.1.mlp.c_fc.weight"], expected), 0.0);
  }
}

TEST(Safetensors, CheckpointRoundTripGivesIdenticalLogits) {
  for (const auto& tying : {"untied", "tied_transpose", "per_head_scalar"}) {
    auto c = all_on(tying);
    c.ra.learnable = false;  // a buffer must round-trip too
    c.ra.alpha = 0.45;
    auto model = make_model(c, 1);
    TempFile file("ckpt");
    save_model(*model, file.path());
    EXPECT_EQ(read_safetensors(file.path()).metadata.at("format"), "ratio");
    auto other_config = c;
    other_config.ra.alpha = 0.1;
    auto restored = make_model(other_config, 2);
    auto idx = random_tokens(c, 2, 10, 4);
    EXPECT_GT(max_abs_diff(model->forward(idx).logits, restored->forward(idx).logits), 1e-4);
    load_model(*restored, file.path());
    EXPECT_EQ(max_abs_diff(model->forward(idx).logits, restored->forward(idx).logits), 0.0) << tying;
  }
}

TEST(Safetensors, WiderMlpCopiesPretrainedUnits) {
  const auto c = tiny();
  auto source = pretrained_baseline(c);
  auto wide_config = c;
  wide_config.mlp_ratio = 5.0;  // 80 units, 64 pretrained
  auto [model, report] = load_pretrained(source, wide_config);
  std::set<std::string> resized(report.resized.begin(), report.resized.end());
  EXPECT_TRUE(resized.count("h.0.mlp.c_fc.weight"));
  EXPECT_TRUE(resized.count("h.0.mlp.c_proj.weight"));
  auto fc = model->named_parameters()["h.0.mlp.c_fc.weight"];  // [80, 16]
  auto pre = source->named_parameters()["h.0.mlp.c_fc.weight"];  // [64, 16]
  EXPECT_EQ(max_abs_diff(fc.slice(0, 0, 64), pre), 0.0);
  EXPECT_GT(fc.slice(0, 64, 80).abs().sum().item<double>(), 0.0);  // the new units keep their random init
  auto proj = model->named_parameters()["h.0.mlp.c_proj.weight"];  // [16, 80]
  EXPECT_EQ(max_abs_diff(proj.slice(1, 0, 64), source->named_parameters()["h.0.mlp.c_proj.weight"]), 0.0);
}

TEST(Safetensors, MlaAtFullRankReproducesThePretrainedModel) {
  const auto c = tiny();
  auto source = pretrained_baseline(c);
  auto [model, report] = load_pretrained(source, with_mla(c, c.n_embd));  // rank C: the factorisation is exact
  EXPECT_EQ(report.derived.size(), 9u * c.n_layer);
  auto idx = random_tokens(c, 2, 9, 3);
  EXPECT_LT(max_abs_diff(model->forward(idx).logits, source->forward(idx).logits), 1e-4);
}

TEST(Safetensors, MlaLatentIsTheBestRankLApproximation) {
  const auto c = tiny();
  auto source = pretrained_baseline(c);
  auto model = load_pretrained(source, with_mla(c, 4)).model;
  auto params = model->named_parameters();
  auto wv = source->named_parameters()["h.0.attn.c_attn.weight"].slice(0, 2 * c.n_embd, 3 * c.n_embd);
  auto approx = torch::matmul(params["h.0.attn.v_up.weight"], params["h.0.attn.v_down.weight"]);
  auto s = torch::linalg_svdvals(wv.to(torch::kFloat64));
  const double eckart_young = s.slice(0, 4).square().sum().sqrt().item<double>();
  const double error = (approx.to(torch::kFloat64) - wv.to(torch::kFloat64)).norm().item<double>();
  EXPECT_NEAR(error, eckart_young, 1e-4);
}

std::string load_error(const ModelConfig& c, const std::map<std::string, torch::Tensor>& tensors) {
  TempFile file("bad");
  write_safetensors(file.path(), tensors);
  auto model = make_model(c, 1);
  try {
    load_hf_gpt2(*model, file.path());
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

TEST(Safetensors, BadFilesAreClearErrors) {
  const auto c = tiny();
  auto source = pretrained_baseline(c);
  auto good = as_hf(source, "", torch::kFloat32);

  auto unknown = good;
  unknown["h.0.attn.extra.weight"] = torch::zeros({2, 2});
  EXPECT_NE(load_error(c, unknown).find("'h.0.attn.extra.weight' has no counterpart"), std::string::npos);

  auto deeper = good;
  deeper["h.7.ln_1.weight"] = torch::ones({c.n_embd});
  EXPECT_NE(load_error(c, deeper).find("h.7.ln_1.weight"), std::string::npos);

  auto bad_shape = good;
  bad_shape["h.1.attn.c_proj.weight"] = torch::zeros({c.n_embd, c.n_embd + 1});
  const auto msg = load_error(c, bad_shape);
  EXPECT_NE(msg.find("h.1.attn.c_proj.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[16, 16]"), std::string::npos) << msg;

  auto missing = good;
  missing.erase("h.2.ln_2.bias");
  EXPECT_NE(load_error(c, missing).find("missing tensor 'h.2.ln_2.bias'"), std::string::npos);

  auto wrong_width = c;
  wrong_width.n_embd = 32;
  EXPECT_NE(load_error(wrong_width, good).find("n_embd"), std::string::npos);

  // Not a safetensors file, and a dtype we do not read.
  TempFile junk("junk");
  { std::ofstream(junk.path()) << "definitely not safetensors"; }
  EXPECT_THROW(read_safetensors(junk.path()), std::runtime_error);
  TempFile ints("ints");
  {
    const std::string header = R"({"x":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})";
    std::ofstream out(ints.path(), std::ios::binary);
    uint64_t n = header.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << header << std::string(8, '\0');
  }
  try {
    read_safetensors(ints.path());
    FAIL() << "I64 must be refused";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("I64 is not supported"), std::string::npos) << e.what();
  }
}

TEST(Safetensors, CheckpointOfAnotherArchitectureIsRefused) {
  auto model = make_model(all_on(), 1);
  TempFile file("arch");
  save_model(*model, file.path());
  auto other = make_model(tiny(), 1);
  EXPECT_THROW(load_model(*other, file.path()), std::runtime_error);
}

}  // namespace
}  // namespace ratio::model::testing
