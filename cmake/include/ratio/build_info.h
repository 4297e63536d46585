#pragma once

#include <string>

namespace ratio {
// The git commit this binary was built from ("-dirty" when the tree had local changes).
const char* build_id();
// RATIO's release version, project(VERSION) in CMakeLists.txt.
const char* version();
// What `PROGRAM --version` prints: "PROGRAM VERSION" then "build BUILD_ID", one per line.
std::string version_text(const std::string& program);
}  // namespace ratio
