# Build id (git commit, "-dirty" when the tree had changes) recorded with every result,
# so a matrix that mixes builds is visible. Only build_info.cpp recompiles when it changes.
execute_process(COMMAND git -C ${CMAKE_SOURCE_DIR} describe --always --dirty --abbrev=12
  OUTPUT_VARIABLE RATIO_BUILD_ID OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
if(NOT RATIO_BUILD_ID)
  set(RATIO_BUILD_ID "unknown")
endif()
configure_file(${CMAKE_SOURCE_DIR}/cmake/build_info.cpp.in ${CMAKE_BINARY_DIR}/generated/build_info.cpp @ONLY)
add_library(ratio_build_info STATIC ${CMAKE_BINARY_DIR}/generated/build_info.cpp)
target_include_directories(ratio_build_info PUBLIC ${CMAKE_SOURCE_DIR}/cmake/include)
