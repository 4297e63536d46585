# Third-party libraries, all from Debian packages (scripts/setup.sh installs them;
# scripts/gpu-bundle.sh unpacks them into .deps/ for machines without a package manager).
find_package(nlohmann_json 3 REQUIRED)
find_package(yaml-cpp REQUIRED)
find_package(spdlog REQUIRED)
find_package(SQLite3 REQUIRED)
find_package(Threads REQUIRED)
# CLI11 is header-only and heavy: only the .cpp files that parse options include it.
find_package(CLI11 2 REQUIRED)

# cpp-httplib: Debian ships the compiled flavour (libcpp-httplib.so) without a CMake config.
find_path(HTTPLIB_INCLUDE_DIR httplib.h REQUIRED)
find_library(HTTPLIB_LIBRARY cpp-httplib REQUIRED)
add_library(ratio_httplib INTERFACE)
target_include_directories(ratio_httplib INTERFACE ${HTTPLIB_INCLUDE_DIR})
# Debian builds it with OpenSSL, zlib and brotli; the header's declarations must match.
target_compile_definitions(ratio_httplib INTERFACE
  CPPHTTPLIB_OPENSSL_SUPPORT CPPHTTPLIB_ZLIB_SUPPORT CPPHTTPLIB_BROTLI_SUPPORT)
if(EXISTS "${HTTPLIB_INCLUDE_DIR}/x86_64-linux-gnu")
  target_include_directories(ratio_httplib INTERFACE "${HTTPLIB_INCLUDE_DIR}/x86_64-linux-gnu")
endif()
target_link_libraries(ratio_httplib INTERFACE ${HTTPLIB_LIBRARY} Threads::Threads)

if(RATIO_BUILD_TESTS)
  find_package(GTest REQUIRED)
  include(GoogleTest)
endif()
