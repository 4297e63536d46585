# Writes a C++ source holding the preset YAML files as string literals.
# cmake -DOUT=presets_embedded.cpp -DPRESETS="a.yaml;b.yaml" -P embed_presets.cmake
set(body "")
foreach(file ${PRESETS})
  get_filename_component(name ${file} NAME_WE)
  file(READ ${file} text)
  string(FIND "${text}" ")ratio_preset\"" clash)
  if(NOT clash EQUAL -1)
    message(FATAL_ERROR "${file} contains the literal's delimiter )ratio_preset\"")
  endif()
  string(APPEND body "      {\"${name}\", R\"ratio_preset(${text})ratio_preset\"},\n")
endforeach()
file(WRITE ${OUT}
"// Generated from matrix/presets/*.yaml by matrix/embed_presets.cmake; do not edit.
#include \"matrix/matrix_internal.h\"

namespace ratio::matrix_detail {

const std::vector<EmbeddedPreset>& embedded_presets() {
  static const std::vector<EmbeddedPreset> presets = {
${body}  };
  return presets;
}

}  // namespace ratio::matrix_detail
")
