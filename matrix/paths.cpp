// Confining the files a job reads to the folders the daemon allows (see PathRoots in matrix.h).

#include <filesystem>
#include <system_error>

#include "matrix/matrix.h"

namespace ratio {

namespace fs = std::filesystem;

namespace {

// The folder the worker opens for data.dataset, resolved as worker/data.cpp resolve_dataset does:
// the built-in corpus is prepared under data_dir; an absolute path, or a relative one that is a
// folder from the worker's current directory (ratiod's, which workers inherit), is used as given;
// any other name is a folder under data_dir.
fs::path dataset_target(const DataConfig& data, const fs::path& data_dir) {
  if (data.dataset == "fortunes") return data_dir / ("fortunes-" + data.tokenizer);
  const fs::path given = data.dataset;
  std::error_code ec;
  if (given.is_absolute() || fs::is_directory(given, ec)) return fs::absolute(given, ec);
  return data_dir / given;
}

// The path with symlinks followed for the part that exists and `..` folded for the rest, so a link
// out of a root or a `../..` escape shows where it really leads. (A link created after the check is
// not seen: whoever can write into a root already controls what workers read.)
fs::path real_path(const fs::path& target) {
  std::error_code ec;
  const fs::path real = fs::weakly_canonical(target, ec);
  return ec ? target.lexically_normal() : real;
}

bool inside_a_root(const fs::path& real, const std::vector<std::string>& roots) {
  for (const std::string& root : roots) {
    const fs::path relative = real.lexically_relative(root);
    if (!relative.empty() && *relative.begin() != "..") return true;
  }
  return false;
}

std::string roots_text(const std::vector<std::string>& roots) {
  std::string text;
  for (const std::string& root : roots) text += (text.empty() ? "" : ", ") + root;
  return text;
}

// Nothing when the key's target lies inside a root, else the error naming key, target and roots.
std::vector<SpecError> check(const std::string& key, const std::string& value, const fs::path& target,
                             const PathRoots& roots) {
  const fs::path real = real_path(target);
  if (inside_a_root(real, roots.allowed)) return {};
  return {{key, "'" + value + "' resolves to " + real.string() + ", outside the folders this daemon lets jobs read (" +
                    roots_text(roots.allowed) + "); put it under one of them (a plain name like fineweb-edu is a " +
                    "folder under " + roots.data_dir + "), or start ratiod with --allow-path DIR"}};
}

}  // namespace

PathRoots make_path_roots(const std::string& data_dir, const std::vector<std::string>& allow_paths) {
  PathRoots roots;
  roots.data_dir = fs::absolute(data_dir).lexically_normal().string();
  std::vector<std::string> dirs = {data_dir};
  dirs.insert(dirs.end(), allow_paths.begin(), allow_paths.end());
  for (const std::string& dir : dirs) {
    std::error_code ec;
    fs::path real = fs::weakly_canonical(fs::absolute(dir), ec);
    if (ec) real = fs::absolute(dir).lexically_normal();
    if (!real.has_filename() && real != real.root_path()) real = real.parent_path();  // "dir/" -> "dir"
    roots.allowed.push_back(real.string());
  }
  return roots;
}

std::vector<SpecError> confinement_errors(const JobSpec& spec, const PathRoots& roots) {
  std::vector<SpecError> errors = check("data.dataset", spec.data.dataset, dataset_target(spec.data, roots.data_dir), roots);
  if (!spec.train.init_from.empty()) {  // a file the worker opens from its current directory
    std::error_code ec;
    for (SpecError& e : check("train.init_from", spec.train.init_from, fs::absolute(spec.train.init_from, ec), roots)) {
      errors.push_back(std::move(e));
    }
  }
  return errors;
}

}  // namespace ratio
