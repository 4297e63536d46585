// Matrix file -> resolved jobs. The file is read once into yaml-cpp nodes (which keep line/column);
// each job is assembled as job-spec JSON together with the origin of every value it took from the
// file, then parsed strictly by job_spec_from_json. Its errors (JSON paths) are mapped back to the
// file through those origins, so the user sees "demo.yaml:14:23: steps[2].mla.latent_dim: ...".

#include "matrix/matrix.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <tuple>

#include <nlohmann/json.hpp>
#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/yaml.h>

#include "matrix/matrix_internal.h"

namespace ratio {

using matrix_detail::Origin;
using matrix_detail::Origins;
using matrix_detail::ResolvedJob;
using nlohmann::json;

namespace {

// Mechanisms whose key accepts `true`/`false` for `{enabled: ...}`; in a step, a mapping without
// `enabled` (`ra: {alpha: 0.5}`) also switches the mechanism on.
const std::set<std::string> kModelMechanisms = {"mla",      "ra",        "ra_ct",        "mlp_gate",
                                                "mlp_cross", "mlp_latent", "learned_ratio"};
const std::set<std::string> kTrainMechanisms = {"spam", "prune"};

const std::regex kIdPattern("[A-Za-z0-9._-]+");

std::string join(const std::string& path, const std::string& key) { return path.empty() ? key : path + "." + key; }
std::string index(const std::string& path, size_t i) { return path + "[" + std::to_string(i) + "]"; }

std::string list_text(const std::vector<std::string>& items) {
  std::string s;
  for (const auto& item : items) s += (s.empty() ? "" : ", ") + item;
  return s;
}

// ---- problems -----------------------------------------------------------------------------------

class Problems {
 public:
  explicit Problems(std::string file) : file_(std::move(file)) {}

  void at(const YAML::Mark& mark, const std::string& path, const std::string& message) {
    add({file_, mark.line + 1, mark.column + 1, path, message});
  }
  void add(MatrixProblem p) {
    for (const auto& q : list_) {
      if (q.line == p.line && q.column == p.column && q.path == p.path && q.message == p.message) return;
    }
    list_.push_back(std::move(p));
  }
  const std::string& file() const { return file_; }
  // In file order, so the primary problem is the first one in the file.
  void throw_if_any() const {
    if (list_.empty()) return;
    std::vector<MatrixProblem> sorted = list_;
    std::stable_sort(sorted.begin(), sorted.end(), [](const MatrixProblem& a, const MatrixProblem& b) {
      return std::tie(a.line, a.column) < std::tie(b.line, b.column);
    });
    throw MatrixError(std::move(sorted));
  }

 private:
  std::string file_;
  std::vector<MatrixProblem> list_;
};

// ---- YAML values ---------------------------------------------------------------------------------

// YAML 1.2 core schema for plain scalars; quoted scalars are always strings, so `"5"` is not 5.
json scalar_value(const YAML::Node& n) {
  const std::string& s = n.Scalar();
  if (n.Tag() != "?") return s;
  static const std::regex kInt("[-+]?[0-9]+");
  static const std::regex kFloat(R"([-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?)");
  if (s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL") return nullptr;
  if (s == "true" || s == "True" || s == "TRUE") return true;
  if (s == "false" || s == "False" || s == "FALSE") return false;
  if (std::regex_match(s, kInt)) {
    try {
      return std::stoll(s);
    } catch (const std::out_of_range&) {
      return std::stod(s);  // too large for an integer; the range check names it
    }
  }
  if (std::regex_match(s, kFloat)) {
    try {
      return std::stod(s);
    } catch (const std::out_of_range&) {
      return s;  // beyond double (1e999): reported as "expected a number, got \"1e999\""
    }
  }
  return s;
}

json value_of(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Scalar:
      return scalar_value(n);
    case YAML::NodeType::Sequence: {
      json a = json::array();
      for (const auto& item : n) a.push_back(value_of(item));
      return a;
    }
    case YAML::NodeType::Map: {
      json o = json::object();
      for (const auto& kv : n) o[kv.first.Scalar()] = value_of(kv.second);
      return o;
    }
    default:
      return nullptr;
  }
}

// ---- text encoding ------------------------------------------------------------------------------

// Byte offset of the first byte that does not start a valid UTF-8 sequence (overlong forms,
// surrogates and code points past U+10FFFF included), or npos when the text is valid UTF-8.
size_t first_invalid_utf8(const std::string& text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
    const unsigned char b = byte(i);
    size_t len = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 0;
    if (len == 0 || i + len > text.size()) return i;
    uint32_t cp = len == 1 ? b : b & (0x7F >> len);
    for (size_t k = 1; k < len; ++k) {
      if ((byte(i + k) & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (byte(i + k) & 0x3F);
    }
    const uint32_t smallest[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < smallest[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return std::string::npos;
}

// A matrix is UTF-8 text. Other bytes (and NULs and control characters, which YAML forbids) would
// reach error messages and the stored JSON, which must be valid UTF-8: report the first one with
// its line and column (in characters) before any parser sees it.
void check_text(const std::string& text, const std::string& source) {
  const size_t bad = first_invalid_utf8(text);
  size_t control = 0;
  while (control < text.size()) {
    const unsigned char c = static_cast<unsigned char>(text[control]);
    if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7F) break;
    ++control;
  }
  const size_t at = std::min(bad, control);
  if (at >= text.size()) return;
  int line = 1, column = 1;
  for (size_t i = 0; i < at; ++i) {
    if (text[i] == '\n') {
      line += 1;
      column = 1;
    } else if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) {  // count characters, not bytes
      column += 1;
    }
  }
  char hex[8];
  std::snprintf(hex, sizeof hex, "0x%02X", static_cast<unsigned char>(text[at]));
  const std::string what = at == bad ? std::string("byte ") + hex + " is not valid UTF-8"
                                     : std::string("control character ") + hex + " is not allowed in YAML or JSON";
  throw MatrixError({{source, line, column, "", what + "; save the matrix as UTF-8 text"}});
}

// Aliases make a small text a huge tree (`b: [*a, *a, ...]` nested a few times); a matrix never
// needs more than this many values.
constexpr size_t kMaxNodes = 200000;

// yaml-cpp keeps both entries of a repeated key; report that, keys that are not plain names, and
// keys without a value. Returns false once the tree exceeds kMaxNodes (reported, walk abandoned).
bool check_keys(const YAML::Node& n, const std::string& path, size_t& visited, Problems& problems) {
  if (++visited > kMaxNodes) {
    problems.at(n.Mark(), path,
                "the matrix holds more than " + std::to_string(kMaxNodes) + " values (aliases included); "
                "write it without repeating aliases");
    return false;
  }
  if (n.IsSequence()) {
    for (size_t i = 0; i < n.size(); ++i) {
      if (!check_keys(n[i], index(path, i), visited, problems)) return false;
    }
  } else if (n.IsMap()) {
    std::map<std::string, int> first_line;
    for (const auto& kv : n) {
      if (!kv.first.IsScalar()) {
        problems.at(kv.first.Mark(), path, "a key must be a plain name, not a list or mapping");
        continue;
      }
      const std::string& key = kv.first.Scalar();
      auto [it, fresh] = first_line.emplace(key, kv.first.Mark().line + 1);
      if (!fresh) {
        problems.at(kv.first.Mark(), join(path, key),
                    "duplicate key (first on line " + std::to_string(it->second) + "); keep only one");
      }
      if (key == "<<" && kv.first.Tag() == "?") {  // yaml-cpp would read it as an ordinary key
        problems.at(kv.first.Mark(), join(path, key),
                    "YAML merge keys are not supported; put shared settings in `base` (steps start from it)");
        continue;
      }
      if (kv.second.IsNull()) {  // `key:` alone would silently mean "the default"
        problems.at(kv.first.Mark(), join(path, key), "has no value; give it one or remove the key");
      }
      if (!check_keys(kv.second, join(path, key), visited, problems)) return false;
    }
  }
  return true;
}

bool has_key(const YAML::Node& map, const std::string& key) {
  for (const auto& kv : map) {
    if (kv.first.Scalar() == key) return true;
  }
  return false;
}

std::optional<std::string> read_text(const YAML::Node& n, const std::string& path, Problems& problems) {
  if (!n.IsScalar()) {
    problems.at(n.Mark(), path, "expected text, got " + value_of(n).dump() + "; write it as a quoted string");
    return std::nullopt;
  }
  return n.Scalar();
}

std::optional<int64_t> read_int(const YAML::Node& n, const std::string& path, int64_t lo, int64_t hi,
                                Problems& problems) {
  json v = n.IsScalar() ? scalar_value(n) : value_of(n);
  if (!v.is_number_integer()) {
    problems.at(n.Mark(), path, "expected an integer, got " + v.dump() + "; write a whole number");
    return std::nullopt;
  }
  int64_t x = v.get<int64_t>();
  if (x < lo || x > hi) {
    problems.at(n.Mark(), path,
                std::to_string(x) + " is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return std::nullopt;
  }
  return x;
}

// ---- the document ------------------------------------------------------------------------------

struct StepDoc {
  std::string id;
  std::string name;
  std::string description;
  std::vector<std::string> tags;
  YAML::Node node;
  std::string path;  // "steps[3]"
};

struct GridAxis {
  std::string key;       // as written: "mlp_ratio", "ra.alpha", "train.lr"
  std::string job_path;  // "model.mlp_ratio", "model.ra.alpha", "train.lr"
  YAML::Node key_node;
  std::vector<YAML::Node> values;
};

struct ForcedGates {
  bool all = false;                      // every step with a learnable gate
  std::vector<std::string> requested;    // or these steps
  std::vector<YAML::Node> requested_nodes;
  int64_t first_id = -1;                 // twin numbering; -1 = max numeric step id + 1
  YAML::Node node;
};

struct MatrixDoc {
  std::string name;
  std::string description;
  int max_attempts = 3;
  int priority = 0;
  YAML::Node base;
  std::vector<StepDoc> steps;
  std::vector<uint64_t> seeds;
  std::vector<YAML::Node> seed_nodes;
  std::vector<GridAxis> grid;
  ForcedGates forced;
  std::optional<DecideConfig> decide;
  YAML::Node decide_node;
};

const std::vector<std::string> kTopKeys = {"name", "description",  "base",         "steps",    "seeds",
                                           "grid", "forced_gates", "max_attempts", "priority", "decide"};

std::vector<std::string> model_keys() {
  const json model = to_json(ModelConfig{});
  std::vector<std::string> keys;
  for (const auto& [key, value] : model.items()) keys.push_back(key);
  return keys;
}

void read_step(const YAML::Node& n, const std::string& path, MatrixDoc& doc, Problems& problems) {
  if (!n.IsMap()) {
    problems.at(n.Mark(), path, "expected a step mapping like {id: 5, name: \"+ RA\", ra: true}");
    return;
  }
  static const std::vector<std::string> kStepKeys = {"id", "name", "description", "tags", "model", "train", "data"};
  static const std::vector<std::string> kModelKeys = model_keys();
  StepDoc step;
  step.node = n;
  step.path = path;
  bool has_id = false;
  for (const auto& kv : n) {
    const std::string key = kv.first.Scalar();
    const std::string at = join(path, key);
    if (key == "id") {
      json v = value_of(kv.second);
      auto id = read_text(kv.second, at, problems);
      if (!id) continue;
      has_id = true;
      step.id = *id;
      if (!(v.is_string() || v.is_number_integer()) || !std::regex_match(step.id, kIdPattern)) {
        problems.at(kv.second.Mark(), at,
                    "step id " + v.dump() + " must be a number or a name of letters, digits, '.', '_', '-'");
      }
    } else if (key == "name" || key == "description") {
      if (auto text = read_text(kv.second, at, problems)) (key == "name" ? step.name : step.description) = *text;
    } else if (key == "tags") {
      if (!kv.second.IsSequence()) {
        problems.at(kv.second.Mark(), at, "expected a list of strings, e.g. [reciprocal, cheap]");
        continue;
      }
      for (size_t i = 0; i < kv.second.size(); ++i) {
        if (auto tag = read_text(kv.second[i], index(at, i), problems)) step.tags.push_back(*tag);
      }
    } else if (key == "model" || key == "train" || key == "data") {
      if (!kv.second.IsMap()) problems.at(kv.second.Mark(), at, "expected a mapping of " + key + " settings");
    } else if (std::find(kModelKeys.begin(), kModelKeys.end(), key) == kModelKeys.end()) {
      problems.at(kv.first.Mark(), at,
                  "unknown step key; use one of: " + list_text(kStepKeys) + ", or a model key: " +
                      list_text(kModelKeys));
    }
  }
  if (!has_id) {
    problems.at(n.Mark(), path, "step has no id; add `id: <number or name>`");
    return;
  }
  if (step.name.empty()) step.name = "step " + step.id;
  for (const auto& other : doc.steps) {
    if (other.id == step.id) {
      problems.at(n.Mark(), join(path, "id"),
                  "duplicate step id '" + step.id + "' (also " + other.path + "); give every step its own id");
      return;
    }
  }
  doc.steps.push_back(std::move(step));
}

void read_steps(const YAML::Node& n, const std::string& path, MatrixDoc& doc, Problems& problems) {
  if (!n.IsSequence() || n.size() == 0) {
    problems.at(n.Mark(), path, "expected a non-empty list of steps, e.g. [{id: 0, name: baseline}]");
    return;
  }
  for (size_t i = 0; i < n.size(); ++i) read_step(n[i], index(path, i), doc, problems);
}

void read_base(const YAML::Node& n, Problems& problems) {
  if (!n.IsMap()) {
    problems.at(n.Mark(), "base", "expected a mapping with model, train and data settings");
    return;
  }
  for (const auto& kv : n) {
    const std::string key = kv.first.Scalar();
    if (key != "model" && key != "train" && key != "data") {
      problems.at(kv.first.Mark(), join("base", key), "unknown key; base holds model, train and data");
    } else if (!kv.second.IsMap()) {
      problems.at(kv.second.Mark(), join("base", key), "expected a mapping of " + key + " settings");
    }
  }
}

void read_seeds(const YAML::Node& n, MatrixDoc& doc, Problems& problems) {
  if (!n.IsSequence() || n.size() == 0) {
    problems.at(n.Mark(), "seeds", "expected a non-empty list of seeds, e.g. [1, 2, 3]");
    return;
  }
  for (size_t i = 0; i < n.size(); ++i) {
    auto seed = read_int(n[i], index("seeds", i), 0, int64_t(1) << 40, problems);
    if (!seed) continue;
    if (std::find(doc.seeds.begin(), doc.seeds.end(), uint64_t(*seed)) != doc.seeds.end()) {
      problems.at(n[i].Mark(), index("seeds", i), "seed " + std::to_string(*seed) + " is listed twice");
      continue;
    }
    doc.seeds.push_back(uint64_t(*seed));
    doc.seed_nodes.push_back(n[i]);
  }
}

std::optional<double> read_real(const YAML::Node& n, const std::string& path, double lo, double hi, bool open_lo,
                                bool open_hi, Problems& problems) {
  json v = n.IsScalar() ? scalar_value(n) : value_of(n);
  if (!v.is_number()) {
    problems.at(n.Mark(), path, "expected a number, got " + v.dump());
    return std::nullopt;
  }
  const double x = v.get<double>();
  if ((open_lo ? x <= lo : x < lo) || (open_hi ? x >= hi : x > hi)) {
    problems.at(n.Mark(), path,
                v.dump() + " is out of range " + (open_lo ? "(" : "[") + json(lo).dump() + ", " + json(hi).dump() +
                    (open_hi ? ")" : "]"));
    return std::nullopt;
  }
  return x;
}

void read_decide(const YAML::Node& n, MatrixDoc& doc, Problems& problems) {
  if (!n.IsMap()) {
    problems.at(n.Mark(), "decide", "expected a mapping, e.g. {max_seeds: 8, confidence: 0.95, min_effect: 0.01}");
    return;
  }
  DecideConfig d;
  for (const auto& kv : n) {
    const std::string key = kv.first.Scalar(), path = "decide." + key;
    if (key == "max_seeds") {
      if (auto x = read_int(kv.second, path, 2, 64, problems)) d.max_seeds = int(*x);
    } else if (key == "confidence") {
      if (auto x = read_real(kv.second, path, 0.5, 1.0, false, true, problems)) d.confidence = *x;
    } else if (key == "min_effect") {
      if (auto x = read_real(kv.second, path, 0.0, 10.0, false, false, problems)) d.min_effect = *x;
    } else {
      problems.at(kv.first.Mark(), path, "unknown key; known keys: max_seeds, confidence, min_effect");
    }
  }
  doc.decide = d;
  doc.decide_node = n;
}

// decide starts from the listed seeds: at least 2 (an interval needs two), at most max_seeds.
void check_decide_seeds(const MatrixDoc& doc, const YAML::Node& root, Problems& problems) {
  if (!doc.decide) return;
  if (doc.seeds.size() < 2) {
    problems.at(doc.decide_node.Mark(), "decide",
                "needs `seeds` with at least 2 seeds to start from (an interval needs two); add e.g. seeds: [1, 2]");
  } else if (int(doc.seeds.size()) > doc.decide->max_seeds) {
    problems.at(root["seeds"].Mark(), "seeds",
                std::to_string(doc.seeds.size()) + " seeds listed but decide.max_seeds is " +
                    std::to_string(doc.decide->max_seeds) + "; list fewer or raise max_seeds");
  }
}

void read_grid(const YAML::Node& n, MatrixDoc& doc, Problems& problems) {
  if (!n.IsMap() || n.size() == 0) {
    problems.at(n.Mark(), "grid", "expected a mapping of key -> list of values, e.g. {mlp_ratio: [2.0, 3.0]}");
    return;
  }
  for (const auto& kv : n) {
    GridAxis axis;
    axis.key = kv.first.Scalar();
    axis.key_node = kv.first;
    const std::string at = join("grid", axis.key);
    const std::string first = axis.key.substr(0, axis.key.find('.'));
    axis.job_path = (first == "model" || first == "train" || first == "data") ? axis.key : "model." + axis.key;
    if (first == "seed" || axis.job_path == "train.seed") {
      problems.at(kv.first.Mark(), at, "use the top-level `seeds: [...]` axis for seeds");
      continue;
    }
    if (!kv.second.IsSequence() || kv.second.size() == 0) {
      problems.at(kv.second.Mark(), at, "expected a non-empty list of values, e.g. [2.0, 2.5, 3.0]");
      continue;
    }
    for (size_t i = 0; i < kv.second.size(); ++i) {
      if (!kv.second[i].IsScalar()) {
        problems.at(kv.second[i].Mark(), index(at, i), "grid values must be single values (numbers, true/false, text)");
      }
      axis.values.push_back(kv.second[i]);
    }
    doc.grid.push_back(std::move(axis));
  }
}

// forced_gates: true | [3, 4] | {steps: true | [3, 4], first_id: 19}
void read_forced_gates(const YAML::Node& n, MatrixDoc& doc, Problems& problems) {
  ForcedGates& f = doc.forced;
  f.node = n;
  auto read_selection = [&](const YAML::Node& s, const std::string& path) {
    json v = value_of(s);
    if (v.is_boolean()) {
      f.all = v.get<bool>();
    } else if (s.IsSequence()) {
      for (size_t i = 0; i < s.size(); ++i) {
        if (auto id = read_text(s[i], index(path, i), problems)) {
          f.requested.push_back(*id);
          f.requested_nodes.push_back(s[i]);
        }
      }
    } else {
      problems.at(s.Mark(), path, "expected true, false or a list of step ids, e.g. [3, 4, 7]");
    }
  };
  if (!n.IsMap()) return read_selection(n, "forced_gates");
  f.all = true;
  for (const auto& kv : n) {
    const std::string key = kv.first.Scalar();
    if (key == "steps") {
      f.all = false;
      read_selection(kv.second, "forced_gates.steps");
    } else if (key == "first_id") {
      if (auto id = read_int(kv.second, "forced_gates.first_id", 0, 1000000, problems)) f.first_id = *id;
    } else {
      problems.at(kv.first.Mark(), join("forced_gates", key), "unknown key; use steps or first_id");
    }
  }
}

MatrixDoc read_document(const YAML::Node& root, Problems& problems) {
  MatrixDoc doc;
  if (!root.IsMap()) {
    problems.at(root.Mark(), "", "a matrix is a mapping with at least `name` and `steps`; see docs/matrix.md");
    return doc;
  }
  size_t visited = 0;
  if (!check_keys(root, "", visited, problems)) return doc;
  bool has_name = false, has_steps = false;
  for (const auto& kv : root) {
    const std::string key = kv.first.Scalar();
    const YAML::Node& v = kv.second;
    if (key == "name") {
      if (auto name = read_text(v, key, problems)) {
        has_name = true;
        doc.name = *name;
        if (!std::regex_match(doc.name, kIdPattern)) {
          problems.at(v.Mark(), key, "name '" + doc.name + "' must be letters, digits, '.', '_' or '-'");
        }
      }
    } else if (key == "description") {
      if (auto text = read_text(v, key, problems)) doc.description = *text;
    } else if (key == "base") {
      doc.base = v;
      read_base(v, problems);
    } else if (key == "steps") {
      has_steps = true;
      read_steps(v, key, doc, problems);
    } else if (key == "seeds") {
      read_seeds(v, doc, problems);
    } else if (key == "grid") {
      read_grid(v, doc, problems);
    } else if (key == "forced_gates") {
      read_forced_gates(v, doc, problems);
    } else if (key == "max_attempts") {
      if (auto x = read_int(v, key, 1, 100, problems)) doc.max_attempts = int(*x);
    } else if (key == "priority") {
      if (auto x = read_int(v, key, -1000, 1000, problems)) doc.priority = int(*x);
    } else if (key == "decide") {
      read_decide(v, doc, problems);
    } else {
      problems.at(kv.first.Mark(), key, "unknown key; known keys: " + list_text(kTopKeys));
    }
  }
  if (!has_name) problems.at(root.Mark(), "name", "missing; add `name: my-matrix` (letters, digits, . _ -)");
  if (!has_steps) problems.at(root.Mark(), "steps", "missing; add a list of steps, e.g. [{id: 0, name: baseline}]");
  check_decide_seeds(doc, root, problems);
  return doc;
}

// ---- assembling one job's spec JSON ----------------------------------------------------------------

// A job under construction: spec JSON plus where each value came from.
struct Draft {
  json spec;
  Origins origins;
  Origin fallback;  // the step itself, for errors about values nobody wrote
  std::set<std::string> base_errors;  // "path: message" of the errors `base` has on its own
};

Origin origin_of(const YAML::Node& key, const YAML::Node& value, const std::string& path, bool from_step) {
  Origin o;
  o.line = value.Mark().line + 1;
  o.column = value.Mark().column + 1;
  o.key_line = key.Mark().line + 1;
  o.key_column = key.Mark().column + 1;
  o.path = path;
  o.from_step = from_step;
  return o;
}

// The value at a dotted path, or nullptr.
const json* find_at(const json& j, const std::string& dotted) {
  const json* v = &j;
  std::stringstream in(dotted);
  for (std::string part; std::getline(in, part, '.');) {
    if (!v->is_object() || !v->contains(part)) return nullptr;
    v = &(*v)[part];
  }
  return v;
}

// The JSON value at a dotted path, created as needed. A parent that holds a plain value (a grid
// key `mlp_ratio.x` after `mlp_ratio: 4.0`) becomes an object, which job_spec_from_json then rejects
// with the path, like any other wrong type.
json& slot_at(json& spec, const std::string& dotted) {
  json* slot = &spec;
  std::stringstream in(dotted);
  for (std::string part; std::getline(in, part, '.');) {
    if (!slot->is_object()) *slot = json::object();
    slot = &(*slot)[part];
  }
  return *slot;
}

// Writes `value` at job path `at`, merging mappings key by key so every leaf keeps its own origin.
void write(Draft& d, const std::string& at, const YAML::Node& key, const YAML::Node& value,
           const std::string& path, bool from_step) {
  d.origins[at] = origin_of(key, value, path, from_step);
  json& slot = slot_at(d.spec, at);
  if (!value.IsMap()) {
    slot = value_of(value);
    return;
  }
  if (!slot.is_object()) slot = json::object();
  for (const auto& kv : value) {
    const std::string k = kv.first.Scalar();
    if (k.find('.') != std::string::npos || k.empty()) {
      slot[k] = value_of(kv.second);  // never a valid key; job_spec_from_json names it under `at`
      continue;
    }
    write(d, at + "." + k, kv.first, kv.second, join(path, k), from_step);
  }
}

void set_enabled(Draft& d, const std::string& at, const YAML::Node& key, const YAML::Node& value,
                 const std::string& path) {
  slot_at(d.spec, at + ".enabled") = true;
  d.origins[at + ".enabled"] = origin_of(key, value, path, true);
}

// One key of a model or train section; applies the mechanism shorthands.
void write_section_key(Draft& d, const std::string& section, const YAML::Node& key, const YAML::Node& value,
                       const std::string& path, bool in_step, Problems& problems) {
  const std::string name = key.Scalar();
  const std::string at = section + "." + name;
  const auto& mechanisms = section == "model" ? kModelMechanisms : kTrainMechanisms;
  if (mechanisms.count(name)) {
    json v = value_of(value);
    if (v.is_boolean()) {
      d.origins[at] = origin_of(key, value, path, in_step);  // errors about its options point here
      return write(d, at + ".enabled", key, value, path, in_step);
    }
    if (!value.IsMap()) {
      problems.at(value.Mark(), path,
                  "expected true, false or a mapping of options, got " + v.dump() + "; e.g. `" + name +
                      ": true` or `" + name + ": {enabled: true}`");
      return;
    }
    if (in_step && !has_key(value, "enabled")) set_enabled(d, at, key, value, path);
  }
  write(d, at, key, value, path, in_step);
}

void write_section(Draft& d, const std::string& section, const YAML::Node& map, const std::string& path,
                   bool in_step, Problems& problems) {
  for (const auto& kv : map) {
    const std::string at = join(path, kv.first.Scalar());
    if (section == "data") {
      write(d, "data." + kv.first.Scalar(), kv.first, kv.second, at, in_step);
    } else {
      write_section_key(d, section, kv.first, kv.second, at, in_step, problems);
    }
  }
}

Draft base_draft(const MatrixDoc& doc, Problems& problems) {
  Draft d;
  d.spec = {{"spec_version", kJobSpecVersion}, {"matrix", doc.name}, {"step", ""},   {"name", ""},
            {"description", ""},               {"tags", json::array()}, {"model", json::object()},
            {"train", json::object()},          {"data", json::object()}};
  if (!doc.base.IsMap()) return d;
  for (const auto& kv : doc.base) {
    const std::string section = kv.first.Scalar();
    if (kv.second.IsMap() && (section == "model" || section == "train" || section == "data")) {
      write_section(d, section, kv.second, join("base", section), false, problems);
    }
  }
  return d;
}

Draft step_draft(const Draft& base, const StepDoc& step, Problems& problems) {
  Draft d = base;
  d.spec["step"] = step.id;
  d.spec["name"] = step.name;
  d.spec["description"] = step.description;
  d.spec["tags"] = step.tags;
  d.fallback.line = d.fallback.key_line = step.node.Mark().line + 1;
  d.fallback.column = d.fallback.key_column = step.node.Mark().column + 1;
  d.fallback.path = step.path;
  for (const auto& kv : step.node) {
    const std::string key = kv.first.Scalar();
    const std::string at = join(step.path, key);
    if (key == "model" || key == "train" || key == "data") {
      if (kv.second.IsMap()) write_section(d, key, kv.second, at, true, problems);
    } else if (key != "id" && key != "name" && key != "description" && key != "tags") {
      write_section_key(d, "model", kv.first, kv.second, at, true, problems);
    }
  }
  return d;
}

// A grid value: `mla: [false, true]` switches, `ra.alpha: [0.1, 0.3]` sets (and enables RA).
void apply_grid_value(Draft& d, const GridAxis& axis, size_t i) {
  const YAML::Node& value = axis.values[i];
  const std::string path = index(join("grid", axis.key), i);
  const size_t dot = axis.job_path.find('.');
  const std::string section = axis.job_path.substr(0, dot);
  const std::string rest = axis.job_path.substr(dot + 1);
  const std::string mechanism = rest.substr(0, rest.find('.'));
  const bool is_mechanism = (section == "model" ? kModelMechanisms : kTrainMechanisms).count(mechanism) > 0;
  if (is_mechanism && rest == mechanism && value_of(value).is_boolean()) {
    d.origins[axis.job_path] = origin_of(axis.key_node, value, path, true);
    return write(d, axis.job_path + ".enabled", axis.key_node, value, path, true);
  }
  if (is_mechanism && rest != mechanism + ".enabled") {
    set_enabled(d, section + "." + mechanism, axis.key_node, value, path);
  }
  write(d, axis.job_path, axis.key_node, value, path, true);
}

// ---- parsing a draft -------------------------------------------------------------------------------

// Maps one job_spec error (JSON path) to the file: the value written there, else its nearest parent,
// else the step. Type errors get the default as an example of a valid value.
MatrixProblem locate(const SpecError& e, const Draft& d, const std::string& file) {
  static const json kDefaults = to_json(JobSpec{});
  std::string at = e.path;
  const Origin* o = nullptr;
  while (!at.empty()) {
    auto it = d.origins.find(at);
    if (it != d.origins.end()) {
      o = &it->second;
      break;
    }
    const size_t dot = at.rfind('.');
    at = dot == std::string::npos ? "" : at.substr(0, dot);
  }
  const bool exact = o && at == e.path;
  if (!o) o = &d.fallback;
  std::string message = e.message;
  if (message.rfind("expected ", 0) == 0) {
    const json* example = find_at(kDefaults, e.path);
    if (example && example->is_primitive()) message += "; write a value like " + example->dump();
  }
  // A base value that only fails in combination with a step (a window too large for the step's
  // block) points at base; name the step too.
  if (!o->from_step && o != &d.fallback && !d.base_errors.count(e.path + ": " + e.message)) {
    message += " (for " + d.fallback.path + ")";
  }
  const bool about_key = message.rfind("unknown key", 0) == 0;
  MatrixProblem p;
  p.file = file;
  p.line = about_key ? o->key_line : o->line;
  p.column = about_key ? o->key_column : o->column;
  p.path = o->path;
  // Not written in the file (a default, or a cross-field check): say which resolved value is meant.
  p.message = exact ? message : "resolved " + e.path + ": " + message;
  return p;
}

std::optional<JobSpec> parse(const Draft& d, Problems& problems) {
  try {
    return job_spec_from_json(d.spec);
  } catch (const SpecInvalid& e) {
    for (const auto& err : e.errors()) problems.add(locate(err, d, problems.file()));
    return std::nullopt;
  }
}

bool is_number(const std::string& id) { return std::regex_match(id, std::regex("[0-9]{1,9}")); }

// ---- forced-gates twins ----------------------------------------------------------------------------

struct StepDraft {
  std::string id;
  Draft draft;
  std::string twin_of;  // for forced-gates twins: the step they copy
};

std::vector<StepDraft> forced_twins(const MatrixDoc& doc, const std::vector<StepDraft>& steps,
                                    const std::vector<std::optional<JobSpec>>& parsed,
                                    std::vector<LintWarning>& warnings, Problems& problems) {
  const ForcedGates& f = doc.forced;
  std::vector<bool> chosen(steps.size(), false);
  for (size_t r = 0; r < f.requested.size(); ++r) {
    size_t i = 0;
    while (i < steps.size() && steps[i].id != f.requested[r]) ++i;
    if (i == steps.size()) {
      problems.at(f.requested_nodes[r].Mark(), "forced_gates",
                  "no step has id '" + f.requested[r] + "'; list ids from `steps`");
      continue;
    }
    if (parsed[i] && !matrix_detail::has_learnable_gate(parsed[i]->model)) {
      warnings.push_back({"forced_twin_without_gates", {steps[i].id},
                          "forced_gates lists step " + steps[i].id +
                              ", which has no learnable gate (mechanism 1, RA-CT, or mechanism 3 per_head_scalar); "
                              "no twin was made"});
      continue;
    }
    chosen[i] = true;
  }
  int64_t next = f.first_id;
  if (next < 0) {
    next = 0;
    for (const auto& s : steps) {
      if (is_number(s.id)) next = std::max<int64_t>(next, std::stoll(s.id) + 1);
    }
  }
  std::vector<StepDraft> twins;
  for (size_t i = 0; i < steps.size(); ++i) {
    if (!parsed[i]) continue;
    const bool gated = matrix_detail::has_learnable_gate(parsed[i]->model);
    if (!(chosen[i] || (f.all && gated))) continue;
    StepDraft twin{std::to_string(next++), steps[i].draft, steps[i].id};
    for (const auto& s : steps) {
      if (s.id == twin.id) {
        problems.at(f.node.Mark(), "forced_gates.first_id",
                    "twin id " + twin.id + " is already a step id; pick a first_id above every step id");
        return {};
      }
    }
    json& spec = twin.draft.spec;
    spec["step"] = twin.id;
    spec["name"] = steps[i].draft.spec["name"].get<std::string>() + " (gates forced open)";
    spec["description"] = "Step " + steps[i].id + " with every learnable gate forced to 1.0. " +
                          steps[i].draft.spec["description"].get<std::string>();
    spec["tags"].push_back("forced_gates_twin_of:" + steps[i].id);
    spec["model"]["force_gates_open"] = true;
    twin.draft.origins["model.force_gates_open"] = origin_of(f.node, f.node, "forced_gates", true);
    twins.push_back(std::move(twin));
  }
  return twins;
}

// ---- axes ------------------------------------------------------------------------------------------

// Every combination of the grid's values, as value indices per axis (one empty combination without a grid).
std::vector<std::vector<size_t>> grid_points(const std::vector<GridAxis>& grid) {
  std::vector<std::vector<size_t>> points = {{}};
  for (const auto& axis : grid) {
    std::vector<std::vector<size_t>> next;
    for (const auto& p : points) {
      for (size_t i = 0; i < axis.values.size(); ++i) {
        next.push_back(p);
        next.back().push_back(i);
      }
    }
    points = std::move(next);
  }
  return points;
}

// A grid value replaces what the step itself set for that key; say so once per step and key.
void warn_grid_overrides(const MatrixDoc& doc, const StepDraft& step, std::vector<LintWarning>& warnings) {
  for (const auto& axis : doc.grid) {
    auto it = step.draft.origins.find(axis.job_path);
    if (it == step.draft.origins.end() || it->second.path.rfind("steps[", 0) != 0) continue;
    warnings.push_back({"no_effect", {step.id},
                        "step " + step.id + ": " + it->second.path + " (line " + std::to_string(it->second.line) +
                            ") is replaced by every value of grid." + axis.key + "; remove one of them"});
  }
}

// A job reading files outside the daemon's roots is refused at the key that names them.
bool confined(const JobSpec& spec, const Draft& d, const PathRoots* confine, Problems& problems) {
  if (!confine) return true;
  const std::vector<SpecError> errors = confinement_errors(spec, *confine);
  for (const auto& e : errors) problems.add(locate(e, d, problems.file()));
  return errors.empty();
}

void expand_axes(const MatrixDoc& doc, const StepDraft& step, const PathRoots* confine, std::vector<ResolvedJob>& out,
                 Problems& problems) {
  for (const auto& point : grid_points(doc.grid)) {
    Draft d = step.draft;
    std::string label;
    for (size_t a = 0; a < point.size(); ++a) {
      const GridAxis& axis = doc.grid[a];
      apply_grid_value(d, axis, point[a]);
      label += (label.empty() ? "" : ",") + axis.key + "=" + axis.values[point[a]].Scalar();
    }
    if (!label.empty()) {
      d.spec["step"] = step.id + "/" + label;
      d.spec["name"] = d.spec["name"].get<std::string>() + " [" + label + "]";
      d.spec["tags"].push_back("grid:" + label);
    }
    const size_t n_seeds = std::max<size_t>(doc.seeds.size(), 1);
    for (size_t s = 0; s < n_seeds; ++s) {
      Draft job = d;
      if (!doc.seeds.empty()) {
        const std::string seed = std::to_string(doc.seeds[s]);
        job.spec["train"]["seed"] = doc.seeds[s];
        job.origins["train.seed"] = origin_of(doc.seed_nodes[s], doc.seed_nodes[s], index("seeds", s), true);
        job.spec["name"] = job.spec["name"].get<std::string>() + " (seed " + seed + ")";
        job.spec["tags"].push_back("seed:" + seed);
      }
      std::optional<JobSpec> spec = parse(job, problems);
      if (!spec || !confined(*spec, job, confine, problems)) continue;
      ResolvedJob r;
      r.job.config_hash = config_hash(*spec);
      r.job.params = param_formula(spec->model);
      r.job.spec = std::move(*spec);
      r.step_id = step.id;
      r.origins = std::move(job.origins);
      out.push_back(std::move(r));
    }
  }
}

// Matrices arrive over HTTP too: refuse one whose axes multiply into more jobs than a study needs
// before building any of them.
constexpr double kMaxJobs = 10000;

void check_job_count(const MatrixDoc& doc, const YAML::Node& root, size_t steps, Problems& problems) {
  double jobs = double(steps) * double(std::max<size_t>(doc.seeds.size(), 1));
  for (const auto& axis : doc.grid) jobs *= double(axis.values.size());
  if (jobs <= kMaxJobs) return;
  const bool has_grid = !doc.grid.empty();
  const YAML::Node& where = has_grid ? root["grid"] : doc.seeds.empty() ? root["steps"] : root["seeds"];
  char count[32];
  std::snprintf(count, sizeof count, "%.0f", jobs);
  problems.at(where.Mark(), has_grid ? "grid" : doc.seeds.empty() ? "steps" : "seeds",
              std::string("the matrix expands to ") + count + " jobs, more than the limit of " +
                  std::to_string(int(kMaxJobs)) + "; use fewer grid values, seeds or steps, or split the matrix");
}

// JSON is YAML's flow style, but yaml-cpp's errors on broken JSON are poor: check JSON syntax with
// nlohmann first (for a line and column), then read it through yaml-cpp like YAML for the marks.
std::string json_as_yaml(const std::string& text, const std::string& source) {
  try {
    const json checked = json::parse(text);  // only for its syntax errors
    (void)checked;
  } catch (const json::parse_error& e) {
    size_t line = 1, column = 1;
    for (size_t i = 0; i + 1 < e.byte && i < text.size(); ++i) {
      if (text[i] == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    std::string what = e.what();
    throw MatrixError({{source, int(line), int(column), "", "JSON syntax error: " + what.substr(what.find(':') + 2)}});
  }
  std::string yaml = text;  // JSON strings cannot hold raw tabs, so every tab is layout
  std::replace(yaml.begin(), yaml.end(), '\t', ' ');
  return yaml;
}

bool looks_like_json(const std::string& text) {
  const size_t first = text.find_first_not_of(" \t\r\n");
  return first != std::string::npos && text[first] == '{';
}

}  // namespace

// ---- public API ------------------------------------------------------------------------------------

std::string MatrixProblem::to_string() const {
  std::string s = file;
  if (line > 0) s += ":" + std::to_string(line) + ":" + std::to_string(column);
  s += ": ";
  if (!path.empty()) s += path + ": ";
  return s + message;
}

namespace {
std::string summarize(const std::vector<MatrixProblem>& problems) {
  std::string s;
  for (const auto& p : problems) s += (s.empty() ? "" : "\n") + p.to_string();
  return s;
}
json problem_json(const MatrixProblem& p) {
  return {{"error", p.to_string()}, {"file", p.file}, {"line", p.line}, {"column", p.column}, {"path", p.path}};
}
}  // namespace

MatrixError::MatrixError(std::vector<MatrixProblem> problems)
    : std::runtime_error(summarize(problems)), problems_(std::move(problems)) {}

json to_json(const MatrixError& error) {
  json j = problem_json(error.primary());
  j["errors"] = json::array();
  for (const auto& p : error.problems()) j["errors"].push_back(problem_json(p));
  return j;
}

bool matrix_detail::has_learnable_gate(const ModelConfig& m) {
  if (m.force_gates_open) return false;
  return m.mlp_gate.enabled || m.ra_ct.enabled || (m.mlp_latent.enabled && m.mlp_latent.tying == "per_head_scalar");
}

Expansion expand_matrix(const std::string& text, const std::string& source, const PathRoots* confine) {
  check_text(text, source);
  YAML::Node root;
  try {
    root = YAML::Load(looks_like_json(text) ? json_as_yaml(text, source) : text);
  } catch (const YAML::DeepRecursion& e) {  // its message is only "bad file"
    throw MatrixError({{source, e.mark.line + 1, e.mark.column + 1, "",
                        "YAML nested too deeply (more than " + std::to_string(e.depth()) + " levels)"}});
  } catch (const YAML::Exception& e) {
    throw MatrixError({{source, e.mark.line + 1, e.mark.column + 1, "", "YAML syntax error: " + e.msg}});
  }
  Problems problems(source);
  MatrixDoc doc = read_document(root, problems);
  problems.throw_if_any();

  Draft base = base_draft(doc, problems);
  try {
    const JobSpec base_spec = job_spec_from_json(base.spec);
    if (confine) {
      for (const auto& err : confinement_errors(base_spec, *confine)) base.base_errors.insert(err.path + ": " + err.message);
    }
  } catch (const SpecInvalid& e) {
    for (const auto& err : e.errors()) base.base_errors.insert(err.path + ": " + err.message);
  }
  std::vector<StepDraft> steps;
  std::vector<std::optional<JobSpec>> parsed;
  for (const auto& step : doc.steps) {
    steps.push_back({step.id, step_draft(base, step, problems), ""});
    parsed.push_back(parse(steps.back().draft, problems));
  }
  Expansion e;
  std::vector<StepDraft> twins = forced_twins(doc, steps, parsed, e.warnings, problems);
  problems.throw_if_any();
  steps.insert(steps.end(), twins.begin(), twins.end());
  check_job_count(doc, root, steps.size(), problems);
  problems.throw_if_any();

  std::vector<ResolvedJob> resolved;
  for (const auto& step : steps) {
    if (step.twin_of.empty()) warn_grid_overrides(doc, step, e.warnings);  // a twin would repeat it
    expand_axes(doc, step, confine, resolved, problems);
  }
  problems.throw_if_any();

  e.name = doc.name;
  e.description = doc.description;
  e.max_attempts = doc.max_attempts;
  e.priority = doc.priority;
  e.decide = doc.decide;
  e.source = source;
  e.steps = int(steps.size());
  for (auto& w : matrix_detail::lint(resolved)) e.warnings.push_back(std::move(w));
  for (auto& r : resolved) e.jobs.push_back(std::move(r.job));
  return e;
}

Expansion expand_matrix_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw MatrixError({{path, 0, 0, "", "cannot read the file; check the path and permissions"}});
  std::stringstream text;
  text << in.rdbuf();
  return expand_matrix(text.str(), path);
}

json param_counts_to_json(const ParamCounts& p) {
  return {{"total", p.total},
          {"baseline", p.baseline},
          {"added", p.added},
          {"effective", p.effective},
          {"by_mechanism", p.by_mechanism}};
}

json to_json(const LintWarning& w) { return {{"rule", w.rule}, {"steps", w.steps}, {"message", w.message}}; }

json to_json(const Expansion& e) {
  json jobs = json::array();
  for (const auto& job : e.jobs) {
    jobs.push_back({{"step", job.spec.step},
                    {"name", job.spec.name},
                    {"config", to_json(job.spec)},
                    {"config_hash", job.config_hash},
                    {"params", param_counts_to_json(job.params)}});
  }
  json warnings = json::array();
  for (const auto& w : e.warnings) warnings.push_back(to_json(w));
  return {{"matrix",
           {{"name", e.name},
            {"description", e.description},
            {"max_attempts", e.max_attempts},
            {"priority", e.priority},
            {"source", e.source},
            {"steps", e.steps},
            {"jobs", e.jobs.size()},
            {"decide", e.decide ? json{{"max_seeds", e.decide->max_seeds},
                                       {"confidence", e.decide->confidence},
                                       {"min_effect", e.decide->min_effect}}
                                : json(nullptr)}}},
          {"jobs", jobs},
          {"warnings", warnings}};
}

}  // namespace ratio
