#include "cli/client.h"

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "cli/args.h"

namespace ratio::cli {
namespace {

std::string describe(httplib::Error error) {
  switch (error) {
    case httplib::Error::Connection:
      return "connection refused";
    case httplib::Error::ConnectionTimeout:
      return "connection timed out";
    case httplib::Error::Read:
      return "no answer (read failed)";
    default:
      return "HTTP client error: " + httplib::to_string(error);
  }
}

std::string unreachable_message(const std::string& server, httplib::Error error) {
  const std::string host_port = server.substr(server.find("://") + 3);
  return "cannot reach ratiod at " + server + " (" + describe(error) +
         "). Start it with `build/bin/ratiod --db ratio.db --listen " + host_port +
         "` (see `ratiod --help`), or point --server / $RATIO_SERVER at a running one";
}

// The API's error bodies are {"error": "what, where, how to fix", ...}; anything else is shown as text.
std::string server_error_message(const std::string& method, const std::string& path, const httplib::Response& res) {
  std::string detail = res.body;
  const nlohmann::json body = nlohmann::json::parse(res.body, nullptr, false);
  if (body.is_object() && body.contains("error") && body["error"].is_string())
    detail = body["error"].get<std::string>();
  if (detail.empty()) detail = "(no body)";
  if (detail.back() == '\n') detail.pop_back();
  std::string hint;
  if (res.status == 401 || res.status == 403) hint = " (pass --token or set $RATIO_TOKEN)";
  return method + " " + path + ": HTTP " + std::to_string(res.status) + ": " + detail + hint;
}

}  // namespace

ApiClient::ApiClient(const std::string& server, const std::string& token)
    : server_(server), http_(std::make_unique<httplib::Client>(server)) {
  http_->set_connection_timeout(5);
  http_->set_read_timeout(60);
  if (!token.empty()) http_->set_bearer_token_auth(token);
  if (!http_->is_valid()) throw ApiError("invalid server URL '" + server + "'; use http://HOST:PORT", kUsage);
}

ApiClient::~ApiClient() = default;

std::string ApiClient::request(const std::string& method, const std::string& path, const std::string* body,
                               const std::string& content_type) {
  httplib::Result res = method == "GET" ? http_->Get(path) : http_->Post(path, *body, content_type);
  if (!res) throw ApiError(unreachable_message(server_, res.error()), kUnreachable);
  if (res->status >= 400) throw ApiError(server_error_message(method, path, *res), kServerError);
  return res->body;
}

nlohmann::json ApiClient::get(const std::string& path) {
  const std::string text = request("GET", path, nullptr, "");
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded())
    throw ApiError("GET " + path + ": the answer is not JSON; is " + server_ + " ratiod?", kServerError);
  return j;
}

std::string ApiClient::get_text(const std::string& path) { return request("GET", path, nullptr, ""); }

nlohmann::json ApiClient::post_json(const std::string& path, const nlohmann::json& body) {
  return post_text(path, body.dump(), "application/json");
}

nlohmann::json ApiClient::post_text(const std::string& path, const std::string& body, const std::string& content_type) {
  const std::string text = request("POST", path, &body, content_type);
  if (text.empty()) return nlohmann::json::object();
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded())
    throw ApiError("POST " + path + ": the answer is not JSON; is " + server_ + " ratiod?", kServerError);
  return j;
}

}  // namespace ratio::cli
