#pragma once
// A small JSON client for ratiod's HTTP API (docs/api.md). Every failure becomes an ApiError whose
// message is one line saying what failed and how to fix it, and whose exit code `ratio` returns.

#include <memory>
#include <stdexcept>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace httplib {
class Client;
}

namespace ratio::cli {

class ApiError : public std::runtime_error {
 public:
  ApiError(const std::string& message, int exit_code) : std::runtime_error(message), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

class ApiClient {
 public:
  // server: "http://host:port"; token: sent as "Authorization: Bearer" when non-empty.
  ApiClient(const std::string& server, const std::string& token);
  ~ApiClient();

  nlohmann::json get(const std::string& path);
  std::string get_text(const std::string& path);  // text/plain answers (logs)
  nlohmann::json post_json(const std::string& path, const nlohmann::json& body);
  nlohmann::json post_text(const std::string& path, const std::string& body, const std::string& content_type);

  const std::string& server() const { return server_; }

 private:
  std::string request(const std::string& method, const std::string& path, const std::string* body,
                      const std::string& content_type);

  std::string server_;
  std::unique_ptr<httplib::Client> http_;
};

}  // namespace ratio::cli
