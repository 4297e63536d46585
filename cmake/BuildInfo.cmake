# Build id (git commit, "-dirty" when the tree had changes) recorded with every result, so a matrix
# that mixes builds is visible. Taken at every build, not at configure time (an id from configure
# time went stale with each commit); only build_info.cpp recompiles when it changes.
set(RATIO_BUILD_INFO_CPP ${CMAKE_BINARY_DIR}/generated/build_info.cpp)
add_custom_target(ratio_build_id
  COMMAND ${CMAKE_COMMAND} -DSOURCE_DIR=${CMAKE_SOURCE_DIR} -DOUT=${RATIO_BUILD_INFO_CPP}
          -P ${CMAKE_SOURCE_DIR}/cmake/WriteBuildInfo.cmake
  BYPRODUCTS ${RATIO_BUILD_INFO_CPP}
  COMMENT "build id from git describe")
add_library(ratio_build_info STATIC ${RATIO_BUILD_INFO_CPP})
add_dependencies(ratio_build_info ratio_build_id)
target_include_directories(ratio_build_info PUBLIC ${CMAKE_SOURCE_DIR}/cmake/include)
