# Version and build id. The version is project(VERSION); the build id (git commit, "-dirty" when the
# tree had changes) is recorded with every result, so a matrix that mixes builds is visible. The id
# is taken at every build, not at configure time (an id from configure time went stale with each
# commit): cmake/WriteBuildInfo.cmake writes generated/ratio_version.h, which only
# cmake/build_info.cpp includes, so a new id recompiles that one file.
set(RATIO_VERSION_H ${CMAKE_BINARY_DIR}/generated/ratio_version.h)
add_custom_target(ratio_build_id
  COMMAND ${CMAKE_COMMAND} -DSOURCE_DIR=${CMAKE_SOURCE_DIR} -DOUT=${RATIO_VERSION_H}
          -DVERSION=${PROJECT_VERSION} -P ${CMAKE_SOURCE_DIR}/cmake/WriteBuildInfo.cmake
  BYPRODUCTS ${RATIO_VERSION_H}
  COMMENT "build id from git describe")
add_library(ratio_build_info STATIC ${CMAKE_SOURCE_DIR}/cmake/build_info.cpp)
add_dependencies(ratio_build_info ratio_build_id)
target_include_directories(ratio_build_info PUBLIC ${CMAKE_SOURCE_DIR}/cmake/include
                           PRIVATE ${CMAKE_BINARY_DIR}/generated)
