# Run at build time (cmake -P) by the ratio_build_id target: writes OUT from ratio_version.h.in with
# VERSION and the current `git describe`. configure_file leaves OUT untouched when nothing changed,
# so only a new commit or a change in the tree's dirtiness recompiles build_info.cpp.
# Outside a git checkout (a source tarball) the id is $RATIO_BUILD_ID when set, else "unknown".
execute_process(COMMAND git -C ${SOURCE_DIR} describe --always --dirty --abbrev=12
  OUTPUT_VARIABLE RATIO_BUILD_ID OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
if(NOT RATIO_BUILD_ID)
  set(RATIO_BUILD_ID "$ENV{RATIO_BUILD_ID}")
endif()
if(NOT RATIO_BUILD_ID)
  set(RATIO_BUILD_ID "unknown")
endif()
set(RATIO_VERSION "${VERSION}")
configure_file(${SOURCE_DIR}/cmake/ratio_version.h.in ${OUT} @ONLY)
