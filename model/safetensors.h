#pragma once
// safetensors files (8-byte little-endian header length, JSON header, raw little-endian tensors),
// our own checkpoints, and initialisation from a Hugging Face GPT-2 model.safetensors.

#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "model/gpt.h"

namespace ratio::model {

struct SafetensorsContents {
  std::map<std::string, torch::Tensor> tensors;  // CPU, in the file's dtype
  std::map<std::string, std::string> metadata;   // the header's "__metadata__"
};

// Reads F32, F16 and BF16 tensors; anything else, or a malformed file, is a std::runtime_error
// naming the file and the tensor.
SafetensorsContents read_safetensors(const std::string& path);
// Writes F32, F16 or BF16 tensors (any device; written contiguous from the CPU).
void write_safetensors(const std::string& path, const std::map<std::string, torch::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Our checkpoints: every parameter and buffer under its module path, as stored ([out, in] weights),
// metadata format=ratio. load_model requires exactly the same names and shapes.
void save_model(GPTImpl& model, const std::string& path);
void load_model(GPTImpl& model, const std::string& path);

// What load_hf_gpt2 did with each of the model's parameters.
struct PretrainedLoad {
  std::vector<std::string> copied;   // taken as is (Conv1D weights transposed)
  std::vector<std::string> resized;  // pretrained rows/columns copied, the rest kept at init (MLP width, vocab padding)
  std::vector<std::string> derived; // MLA tensors from the truncated SVD of the pretrained K and V
  std::vector<std::string> fresh;    // no pretrained counterpart (mechanism tensors): kept at init
};

// Initialises `model` from a Hugging Face GPT-2 model.safetensors (names `h.0.attn.c_attn.weight`, ...,
// optionally prefixed `transformer.`; Conv1D weights stored [in, out]). Baseline shapes load exactly; a
// wider or narrower MLP copies the pretrained units it has room for; MLA's k_down/q_to_latent and
// v_down/v_up are the best rank-L factorisation of the pretrained K and V. Unknown names and
// incompatible shapes are std::runtime_error with the name, both shapes and what to change.
PretrainedLoad load_hf_gpt2(GPTImpl& model, const std::string& path);

}  // namespace ratio::model
