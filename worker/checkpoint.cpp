#include "worker/checkpoint.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>

#include <fcntl.h>
#include <unistd.h>

namespace ratio::worker {

namespace {

constexpr char kMagic[8] = {'R', 'A', 'T', 'I', 'O', 'C', 'K', '1'};

const std::map<std::string, torch::ScalarType>& dtype_names() {
  static const std::map<std::string, torch::ScalarType> names = {
      {"float32", torch::kFloat32}, {"float64", torch::kFloat64}, {"bfloat16", torch::kBFloat16},
      {"float16", torch::kFloat16}, {"int64", torch::kInt64},     {"int32", torch::kInt32},
      {"uint8", torch::kUInt8},     {"bool", torch::kBool}};
  return names;
}

std::string dtype_name(torch::ScalarType t) {
  for (const auto& [name, type] : dtype_names())
    if (type == t) return name;
  throw CheckpointError(std::string("cannot checkpoint tensors of dtype ") + c10::toString(t));
}

void fsync_path(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

}  // namespace

void save_checkpoint(const std::string& path, const nlohmann::json& meta, const NamedTensors& tensors) {
  std::vector<torch::Tensor> cpu;
  nlohmann::json table = nlohmann::json::array();
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    cpu.push_back(t.detach().to(torch::kCPU).contiguous());
    const uint64_t bytes = cpu.back().numel() * cpu.back().element_size();
    table.push_back({{"name", name}, {"dtype", dtype_name(t.scalar_type())}, {"shape", t.sizes().vec()},
                     {"offset", offset}, {"bytes", bytes}});
    offset += bytes;
  }
  const std::string header = nlohmann::json{{"meta", meta}, {"tensors", table}}.dump();
  const uint64_t header_len = header.size();

  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw CheckpointError("cannot write " + tmp + ": " + std::strerror(errno));
    out.write(kMagic, sizeof(kMagic));
    out.write(reinterpret_cast<const char*>(&header_len), sizeof(header_len));
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    for (const auto& t : cpu) out.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.numel() * t.element_size()));
    if (!out) throw CheckpointError("short write to " + tmp + " (disk full?)");
  }
  fsync_path(tmp);
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    throw CheckpointError("cannot rename " + tmp + " to " + path + ": " + std::strerror(errno));
}

nlohmann::json load_checkpoint(const std::string& path, const NamedTensors& into) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CheckpointError("cannot read checkpoint " + path);
  char magic[8];
  uint64_t header_len = 0;
  in.read(magic, sizeof(magic));
  in.read(reinterpret_cast<char*>(&header_len), sizeof(header_len));
  if (!in || std::memcmp(magic, kMagic, sizeof(kMagic)) != 0 || header_len > (1u << 30))
    throw CheckpointError(path + " is not a ratio-worker checkpoint (bad magic); delete it to start over");
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(header);
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError(path + " has a corrupt header: " + e.what());
  }
  const std::streamoff data_start = in.tellg();

  std::map<std::string, nlohmann::json> stored;
  for (const auto& entry : doc.at("tensors")) stored[entry.at("name").get<std::string>()] = entry;
  torch::NoGradGuard no_grad;
  for (const auto& [name, target] : into) {
    auto it = stored.find(name);
    if (it == stored.end()) throw CheckpointError(path + " lacks tensor '" + name + "' (written by another model version?)");
    const nlohmann::json& e = it->second;
    const auto shape = e.at("shape").get<std::vector<int64_t>>();
    const std::string dtype = e.at("dtype").get<std::string>();
    if (shape != target.sizes().vec() || dtype != dtype_name(target.scalar_type()))
      throw CheckpointError(path + ": tensor '" + name + "' is " + dtype + " " + nlohmann::json(shape).dump() +
                            ", the model has " + dtype_name(target.scalar_type()) + " " +
                            nlohmann::json(target.sizes().vec()).dump());
    auto cpu = torch::empty(shape, torch::TensorOptions().dtype(dtype_names().at(dtype)));
    in.seekg(data_start + static_cast<std::streamoff>(e.at("offset").get<uint64_t>()));
    in.read(static_cast<char*>(cpu.data_ptr()), static_cast<std::streamsize>(e.at("bytes").get<uint64_t>()));
    if (!in) throw CheckpointError(path + " is truncated (tensor '" + name + "'); delete it to start over");
    target.copy_(cpu);
  }
  return doc.at("meta");
}

}  // namespace ratio::worker
