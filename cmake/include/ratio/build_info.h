#pragma once

namespace ratio {
// The git commit this binary was built from ("-dirty" when the tree had local changes).
const char* build_id();
}  // namespace ratio
