#include "ratio/build_info.h"

#include "ratio_version.h"

namespace ratio {

const char* build_id() { return RATIO_BUILD_ID; }
const char* version() { return RATIO_VERSION; }

// help2man reads the first line as "PROGRAM VERSION".
std::string version_text(const std::string& program) {
  return program + " " + RATIO_VERSION + "\nbuild " + RATIO_BUILD_ID + "\n";
}

}  // namespace ratio
