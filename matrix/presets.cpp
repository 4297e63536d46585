// Built-in presets: matrix/presets/*.yaml, embedded at build time (matrix/embed_presets.cmake), so
// the daemon and CLI need no files at run time.

#include <stdexcept>

#include "matrix/matrix_internal.h"

namespace ratio {

using matrix_detail::embedded_presets;

namespace {

const matrix_detail::EmbeddedPreset* find_preset(const std::string& name) {
  for (const auto& p : embedded_presets()) {
    if (name == p.name) return &p;
  }
  return nullptr;
}

std::string source_of(const std::string& name) { return "presets/" + name + ".yaml"; }

}  // namespace

bool has_preset(const std::string& name) { return find_preset(name) != nullptr; }

const std::string& preset_text(const std::string& name) {
  // One std::string per preset, made on first use and kept (callers hold references).
  static const std::vector<std::string> texts = [] {
    std::vector<std::string> t;
    for (const auto& p : embedded_presets()) t.emplace_back(p.text);
    return t;
  }();
  const auto& all = embedded_presets();
  for (size_t i = 0; i < all.size(); ++i) {
    if (name == all[i].name) return texts[i];
  }
  std::string known;
  for (const auto& p : all) known += (known.empty() ? "" : ", ") + std::string(p.name);
  throw std::invalid_argument("no preset named '" + name + "'; presets: " + known);
}

Expansion expand_preset(const std::string& name) { return expand_matrix(preset_text(name), source_of(name)); }

std::vector<PresetInfo> list_presets() {
  // The presets are compiled in, so their summaries never change: expand each once.
  static const std::vector<PresetInfo> list = [] {
    std::vector<PresetInfo> l;
    for (const auto& p : embedded_presets()) {
      Expansion e = expand_matrix(p.text, source_of(p.name));
      l.push_back({p.name, e.description, e.steps, int(e.jobs.size())});
    }
    return l;
  }();
  return list;
}

}  // namespace ratio
