#include "model/safetensors.h"

#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace ratio::model {

namespace {

using nlohmann::json;

std::string shape_str(at::IntArrayRef s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  return o.str() + "]";
}

torch::ScalarType dtype_from_name(const std::string& name, const std::string& where) {
  if (name == "F32") return torch::kFloat32;
  if (name == "F16") return torch::kFloat16;
  if (name == "BF16") return torch::kBFloat16;
  throw std::runtime_error(where + ": dtype " + name + " is not supported; convert the file to F32, F16 or BF16");
}

std::string dtype_name(torch::ScalarType t, const std::string& where) {
  if (t == torch::kFloat32) return "F32";
  if (t == torch::kFloat16) return "F16";
  if (t == torch::kBFloat16) return "BF16";
  throw std::runtime_error(where + ": cannot write dtype " + std::string(c10::toString(t)) + "; use fp32, fp16 or bf16");
}

}  // namespace

SafetensorsContents read_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  in.seekg(0, std::ios::end);
  const uint64_t file_size = in.tellg();
  in.seekg(0);
  unsigned char len_bytes[8];
  if (file_size < 8 || !in.read(reinterpret_cast<char*>(len_bytes), 8)) {
    throw std::runtime_error(path + ": too short to be a safetensors file");
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];  // little-endian
  if (header_len > file_size - 8) {
    throw std::runtime_error(path + ": header length " + std::to_string(header_len) +
                             " exceeds the file; not a safetensors file");
  }
  std::string header(header_len, '\0');
  in.read(header.data(), header_len);
  json j;
  try {
    j = json::parse(header);
  } catch (const json::exception& e) {
    throw std::runtime_error(path + ": header is not valid JSON: " + e.what());
  }
  const uint64_t data_start = 8 + header_len, data_size = file_size - data_start;
  SafetensorsContents out;
  for (const auto& [name, entry] : j.items()) {
    if (name == "__metadata__") {
      for (const auto& [k, v] : entry.items()) out.metadata[k] = v.is_string() ? v.get<std::string>() : v.dump();
      continue;
    }
    const std::string where = path + ": tensor '" + name + "'";
    if (!entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets")) {
      throw std::runtime_error(where + ": header entry needs dtype, shape and data_offsets");
    }
    const auto dtype = dtype_from_name(entry["dtype"].get<std::string>(), where);
    const auto shape = entry["shape"].get<std::vector<int64_t>>();
    const auto offsets = entry["data_offsets"].get<std::vector<uint64_t>>();
    auto t = torch::empty(shape, torch::TensorOptions().dtype(dtype));
    const uint64_t nbytes = uint64_t(t.numel()) * t.element_size();
    if (offsets.size() != 2 || offsets[1] < offsets[0] || offsets[1] - offsets[0] != nbytes ||
        offsets[1] > data_size) {
      throw std::runtime_error(where + ": data_offsets do not fit shape " + shape_str(shape) + " or the file");
    }
    in.seekg(data_start + offsets[0]);
    if (!in.read(static_cast<char*>(t.data_ptr()), nbytes)) throw std::runtime_error(where + ": truncated data");
    out.tensors[name] = t;
  }
  return out;
}

void write_safetensors(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> data;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    auto t = tensor.detach().cpu().contiguous();
    const uint64_t nbytes = uint64_t(t.numel()) * t.element_size();
    header[name] = {{"dtype", dtype_name(t.scalar_type(), path + ": tensor '" + name + "'")},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    data.push_back(t);
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keep the data 8-byte aligned
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw std::runtime_error(path + ": cannot write");
  unsigned char len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = (uint64_t(text.size()) >> (8 * i)) & 0xff;
  out.write(reinterpret_cast<const char*>(len_bytes), 8);
  out.write(text.data(), text.size());
  for (const auto& t : data) out.write(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  if (!out) throw std::runtime_error(path + ": write failed");
}

// ---- our checkpoints --------------------------------------------------------------------------------

void save_model(GPTImpl& model, const std::string& path) {
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& p : model.named_parameters()) tensors[p.key()] = p.value();
  for (const auto& b : model.named_buffers()) tensors[b.key()] = b.value();
  write_safetensors(path, tensors, {{"format", "ratio"}});
}

void load_model(GPTImpl& model, const std::string& path) {
  auto file = read_safetensors(path);
  torch::NoGradGuard no_grad;
  std::map<std::string, torch::Tensor> targets;
  for (const auto& p : model.named_parameters()) targets[p.key()] = p.value();
  for (const auto& b : model.named_buffers()) targets[b.key()] = b.value();
  for (const auto& [name, t] : file.tensors) {
    if (!targets.count(name)) {
      throw std::runtime_error(path + ": tensor '" + name + "' is not in this model; the checkpoint was saved " +
                               "from a different configuration");
    }
  }
  for (auto& [name, target] : targets) {
    auto it = file.tensors.find(name);
    if (it == file.tensors.end()) throw std::runtime_error(path + ": missing tensor '" + name + "'");
    if (it->second.sizes() != target.sizes()) {
      throw std::runtime_error(path + ": tensor '" + name + "' has shape " + shape_str(it->second.sizes()) +
                               ", the model expects " + shape_str(target.sizes()));
    }
    target.copy_(it->second);
  }
}

// ---- Hugging Face GPT-2 -----------------------------------------------------------------------------

namespace {

// HF names without the optional "transformer." prefix; the causal-mask buffers of older exports dropped.
std::map<std::string, torch::Tensor> hf_tensors(SafetensorsContents file) {
  std::map<std::string, torch::Tensor> out;
  const std::string prefix = "transformer.";
  for (auto& [name, t] : file.tensors) {
    std::string n = name.rfind(prefix, 0) == 0 ? name.substr(prefix.size()) : name;
    const bool mask_buffer = n.size() > 10 && (n.compare(n.size() - 10, 10, ".attn.bias") == 0 ||
                                               n.find(".attn.masked_bias") != std::string::npos);
    if (mask_buffer || n == "lm_head.weight") continue;  // the head is tied to wte
    out[n] = t.to(torch::kFloat32);
  }
  return out;
}

bool is_conv1d_weight(const std::string& n) {
  for (const char* s : {".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"}) {
    const std::string suffix = s;
    if (n.size() >= suffix.size() && n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0) return true;
  }
  return false;
}

// Parameters a GPT-2 checkpoint must provide (everything else is a RATIO mechanism).
bool has_gpt2_counterpart(const std::string& n) {
  for (const char* part : {".ln_1.", ".ln_2.", ".attn.c_attn.", ".attn.c_proj.", ".mlp.c_fc.", ".mlp.c_proj."}) {
    if (n.find(part) != std::string::npos) return true;
  }
  return n == "wte.weight" || n == "wpe.weight" || n.rfind("ln_f.", 0) == 0;
}

struct Rank {  // best rank-L factorisation W ≈ left·right: left [out, L], right [L, in]
  torch::Tensor left, right;
};

Rank truncated_svd(const torch::Tensor& w, int64_t L) {
  auto usv = torch::linalg_svd(w.to(torch::kFloat64), /*full_matrices=*/false);
  const int64_t r = std::min<int64_t>(L, std::get<1>(usv).size(0));
  auto sqrt_s = std::get<1>(usv).slice(0, 0, r).sqrt();
  auto left = std::get<0>(usv).slice(1, 0, r) * sqrt_s.unsqueeze(0);   // [out, r]
  auto right = sqrt_s.unsqueeze(1) * std::get<2>(usv).slice(0, 0, r);  // [r, in]
  if (r < L) {  // latent wider than the matrix rank: pad with zeros
    left = torch::cat({left, torch::zeros({left.size(0), L - r}, left.options())}, 1);
    right = torch::cat({right, torch::zeros({L - r, right.size(1)}, right.options())}, 0);
  }
  return {left.to(torch::kFloat32), right.to(torch::kFloat32)};
}

}  // namespace

PretrainedLoad load_hf_gpt2(GPTImpl& model, const std::string& path) {
  auto hf = hf_tensors(read_safetensors(path));
  const auto& c = model.config();
  const int64_t C = c.n_embd, H = c.n_head, D = c.head_dim();
  auto fail = [&](const std::string& what) { throw std::runtime_error(path + ": " + what); };

  std::map<std::string, torch::Tensor> pretrained;  // HF tensors in our [out, in] layout
  for (auto& [name, t] : hf) pretrained[name] = is_conv1d_weight(name) ? t.t().contiguous() : t;
  if (!pretrained.count("wte.weight")) fail("no wte.weight: not a GPT-2 checkpoint");
  if (pretrained["wte.weight"].size(1) != C) {
    fail("n_embd " + std::to_string(pretrained["wte.weight"].size(1)) + " in the file, " + std::to_string(C) +
         " in the model; set model.n_embd to the checkpoint's width");
  }
  // Every pretrained tensor must have a place in this architecture.
  auto params = model.named_parameters();
  std::set<std::string> used;
  for (const auto& [name, t] : pretrained) {
    const bool mla_source = c.mla.enabled && name.find(".attn.c_attn.") != std::string::npos;
    if (!params.contains(name) && !mla_source) {
      fail("tensor '" + name + "' has no counterpart in the model (n_layer " + std::to_string(c.n_layer) +
           "); is it a GPT-2 checkpoint of this depth?");
    }
  }

  PretrainedLoad report;
  torch::NoGradGuard no_grad;
  // Copy `src` into `dst`: exact, or the leading block along dims that may grow (rows/cols).
  auto place = [&](const std::string& name, const torch::Tensor& src, bool may_resize) {
    auto dst = params[name];
    if (dst.sizes() == src.sizes()) {
      dst.copy_(src);
      report.copied.push_back(name);
      return;
    }
    if (!may_resize || dst.dim() != src.dim()) {
      fail("tensor '" + name + "' has shape " + shape_str(src.sizes()) + ", the model expects " +
           shape_str(dst.sizes()) + "; the configuration does not match the checkpoint");
    }
    auto d = dst, s = src;
    for (int64_t k = 0; k < dst.dim(); ++k) {
      const int64_t n = std::min(dst.size(k), src.size(k));
      d = d.narrow(k, 0, n);
      s = s.narrow(k, 0, n);
    }
    d.copy_(s);
    report.resized.push_back(name);
  };

  for (auto& p : params) {
    const auto& name = p.key();
    auto it = pretrained.find(name);
    const bool mlp_tensor = name.find(".mlp.c_fc.") != std::string::npos || name.find(".mlp.c_proj.") != std::string::npos;
    if (it != pretrained.end()) {
      if (name == "wte.weight" && p.value().size(0) < it->second.size(0)) {
        fail("vocabulary " + std::to_string(it->second.size(0)) + " in the file exceeds the model's " +
             std::to_string(p.value().size(0)) + "; set model.vocab_size to at least that");
      }
      if (name == "wpe.weight" && p.value().size(0) > it->second.size(0)) {
        fail("block_size " + std::to_string(p.value().size(0)) + " exceeds the checkpoint's " +
             std::to_string(it->second.size(0)) + " positions; lower model.block_size");
      }
      place(name, it->second, mlp_tensor || name == "wte.weight" || name == "wpe.weight");
      used.insert(name);
    }
  }

  if (c.mla.enabled) {
    const int64_t L = c.mla.latent_dim;
    for (int64_t i = 0; i < c.n_layer; ++i) {
      const std::string src = "h." + std::to_string(i) + ".attn.c_attn.", dst = "h." + std::to_string(i) + ".attn.";
      if (!pretrained.count(src + "weight")) fail("missing " + src + "weight");
      auto w = pretrained[src + "weight"].split(C, 0);  // Wq, Wk, Wv [C, C] each
      auto b = pretrained[src + "bias"].split(C, 0);
      params[dst + "q_proj.weight"].copy_(w[0]);
      params[dst + "q_proj.bias"].copy_(b[0]);
      // Scores: q_h·Wk_h·a ≈ q_h·(q_to_latent_h·k_down·a) with Wk ≈ left·right (rank L); the latent
      // score is divided by sqrt(L) instead of sqrt(D), hence the rescale.
      auto k = truncated_svd(w[1], L);
      params[dst + "k_down.weight"].copy_(k.right);  // [L, C]
      params[dst + "q_to_latent"].copy_(k.left.view({H, D, L}) * std::sqrt(double(L) / double(D)));
      // k's bias adds a per-query constant to every score: softmax ignores it.
      params[dst + "k_down.bias"].zero_();
      auto v = truncated_svd(w[2], L);  // Wv ≈ v_up·v_down
      params[dst + "v_down.weight"].copy_(v.right);
      params[dst + "v_down.bias"].zero_();
      params[dst + "v_up.weight"].copy_(v.left);
      params[dst + "v_up.bias"].copy_(b[2]);
      for (const char* n : {"q_proj.weight", "q_proj.bias", "k_down.weight", "k_down.bias", "q_to_latent",
                            "v_down.weight", "v_down.bias", "v_up.weight", "v_up.bias"}) {
        report.derived.push_back(dst + n);
        used.insert(dst + n);
      }
    }
  }
  for (const auto& p : params) {
    if (used.count(p.key())) continue;
    if (has_gpt2_counterpart(p.key())) fail("missing tensor '" + p.key() + "' (the model has more layers than the file?)");
    report.fresh.push_back(p.key());
  }
  return report;
}

}  // namespace ratio::model
