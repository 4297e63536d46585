# Run at build time (cmake -P) by the ratio_build_id target: writes OUT from build_info.cpp.in with
# the current `git describe`. configure_file leaves OUT untouched when the id is unchanged, so only a
# new commit or a change in the tree's dirtiness recompiles build_info.cpp.
execute_process(COMMAND git -C ${SOURCE_DIR} describe --always --dirty --abbrev=12
  OUTPUT_VARIABLE RATIO_BUILD_ID OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
if(NOT RATIO_BUILD_ID)
  set(RATIO_BUILD_ID "unknown")
endif()
configure_file(${SOURCE_DIR}/cmake/build_info.cpp.in ${OUT} @ONLY)
