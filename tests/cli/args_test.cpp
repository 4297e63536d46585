// parse_args: every command's forms, the global options and their environment defaults, and the
// one-line errors for bad command lines.
#include "cli/args.h"

#include <stdlib.h>

#include <gtest/gtest.h>

namespace ratio::cli {
namespace {

// Parses with $RATIO_SERVER and $RATIO_TOKEN set to `server` and `token` (unset when null).
Command parse(std::vector<std::string> args, const char* server = nullptr, const char* token = nullptr) {
  server ? ::setenv("RATIO_SERVER", server, 1) : ::unsetenv("RATIO_SERVER");
  token ? ::setenv("RATIO_TOKEN", token, 1) : ::unsetenv("RATIO_TOKEN");
  Command cmd = parse_args(args);
  ::unsetenv("RATIO_SERVER");
  ::unsetenv("RATIO_TOKEN");
  return cmd;
}

std::string error_of(std::vector<std::string> args) {
  try {
    parse(args);
  } catch (const UsageError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(CliArgs, ServerDefaultsToEnvironmentThenLoopback) {
  EXPECT_EQ(parse({"status"}).server, "http://127.0.0.1:8080");
  EXPECT_EQ(parse({"status"}, "http://10.0.0.2:9000").server, "http://10.0.0.2:9000");
  EXPECT_EQ(parse({"--server", "http://h:1/", "status"}, "http://env:2").server, "http://h:1");
  EXPECT_EQ(parse({"status", "--server=http://h:3"}).server, "http://h:3");
}

TEST(CliArgs, TokenFromFlagOrEnvironment) {
  EXPECT_EQ(parse({"status"}).token, "");
  EXPECT_EQ(parse({"status"}, nullptr, "envtok").token, "envtok");
  EXPECT_EQ(parse({"--token", "flagtok", "status"}, nullptr, "envtok").token, "flagtok");
}

TEST(CliArgs, Submit) {
  Command c = parse({"submit", "m.yaml", "--force", "--watch"});
  EXPECT_EQ(c.name, "submit");
  EXPECT_EQ(c.file, "m.yaml");
  EXPECT_TRUE(c.force);
  EXPECT_TRUE(c.watch);
  c = parse({"submit", "--preset", "demo"});
  EXPECT_EQ(c.preset, "demo");
  EXPECT_EQ(c.file, "");
  EXPECT_NE(error_of({"submit"}).find("usage: ratio submit FILE|--preset NAME"), std::string::npos);
  EXPECT_NE(error_of({"submit", "a.yaml", "--preset", "demo"}).find("not both"), std::string::npos);
}

TEST(CliArgs, StatusResultsFormats) {
  EXPECT_EQ(parse({"status"}).matrix, "");
  Command c = parse({"status", "7", "--watch", "--interval", "0.5"});
  EXPECT_EQ(c.matrix, "7");
  EXPECT_TRUE(c.watch);
  EXPECT_DOUBLE_EQ(c.interval_s, 0.5);
  EXPECT_EQ(parse({"results", "7"}).format, "table");
  EXPECT_EQ(parse({"results", "7", "--json"}).format, "json");
  EXPECT_EQ(parse({"results", "7", "--csv"}).format, "csv");
  EXPECT_NE(error_of({"results", "7", "--csv", "--json"}).find("choose one output format"), std::string::npos);
  EXPECT_NE(error_of({"results"}).find("usage: ratio results MATRIX"), std::string::npos);
}

TEST(CliArgs, RerunCancelLogs) {
  Command c = parse({"rerun", "3", "--failed"});
  EXPECT_EQ(c.matrix, "3");
  EXPECT_TRUE(c.failed_only);
  c = parse({"rerun", "--job", "12"});
  EXPECT_EQ(c.job, "12");
  EXPECT_EQ(c.matrix, "");
  EXPECT_NE(error_of({"rerun", "--job", "12", "--failed"}).find("--failed applies to a MATRIX"), std::string::npos);
  EXPECT_EQ(parse({"cancel", "12"}).job, "12");
  EXPECT_EQ(parse({"cancel", "--matrix", "3"}).matrix, "3");
  c = parse({"logs", "12", "-f", "--tail", "50"});
  EXPECT_TRUE(c.follow);
  EXPECT_EQ(c.tail, 50);
}

TEST(CliArgs, LocalCommandsAndExport) {
  EXPECT_EQ(parse({"expand", "--preset", "demo", "--json"}).format, "json");
  EXPECT_EQ(parse({"expand", "m.yaml"}).file, "m.yaml");
  EXPECT_EQ(parse({"presets"}).name, "presets");
  Command c = parse({"export", "4", "/tmp/out"});
  EXPECT_EQ(c.matrix, "4");
  EXPECT_EQ(c.dir, "/tmp/out");
}

TEST(CliArgs, HelpAnywhereAndEachCommandsOwn) {
  EXPECT_EQ(parse({"--help"}).name, "help");
  EXPECT_EQ(parse({"--help"}).text, help_text());
  EXPECT_EQ(parse({"help"}).text, help_text());
  const Command results = parse({"results", "-h"});
  EXPECT_EQ(results.name, "help");
  EXPECT_NE(results.text.find("ratio results"), std::string::npos) << results.text;
  for (const char* option : {"MATRIX", "--json", "--csv"}) EXPECT_NE(results.text.find(option), std::string::npos);
  const Command logs = parse({"logs", "--help"});
  for (const char* option : {"JOB", "-f,--follow", "--tail", "--interval"})
    EXPECT_NE(logs.text.find(option), std::string::npos) << option;
}

TEST(CliArgs, VersionPrintsVersionAndBuildId) {
  const Command c = parse({"--version"});
  EXPECT_EQ(c.name, "version");
  EXPECT_EQ(c.text.rfind("ratio ", 0), 0u) << c.text;
  EXPECT_NE(c.text.find("\nbuild "), std::string::npos) << c.text;
}

TEST(CliArgs, ErrorsNameTheProblemAndTheFix) {
  EXPECT_NE(error_of({}).find("no command given; try `ratio --help`"), std::string::npos);
  EXPECT_NE(error_of({"sumbit"}).find("unknown command 'sumbit'"), std::string::npos);
  EXPECT_EQ(error_of({"status", "--bogus"}), "unknown option '--bogus' (ratio --help)");
  EXPECT_EQ(error_of({"status", "--csv"}), "option --csv does not apply to `ratio status` (ratio status --help)");
  EXPECT_NE(error_of({"results", "abc"}).find("MATRIX must be a numeric id"), std::string::npos);
  EXPECT_EQ(error_of({"results", "1", "2"}),
            "unexpected argument '2'; usage: ratio results MATRIX [--json|--csv] (ratio results --help)");
  // CLI11's words for a missing or bad value, with the command's usage.
  EXPECT_NE(error_of({"logs", "1", "--tail"}).find("--tail"), std::string::npos);
  EXPECT_NE(error_of({"logs", "1", "--tail"}).find("usage: ratio logs JOB"), std::string::npos);
  EXPECT_NE(error_of({"logs", "1", "--tail", "x"}).find("--tail"), std::string::npos);
  EXPECT_NE(error_of({"status", "--interval", "-1"}).find("--interval"), std::string::npos);
  EXPECT_NE(error_of({"--server", "localhost:8080", "status"}).find("--server must be a URL like http://"),
            std::string::npos);
  EXPECT_NE(error_of({"status", "--watch=yes"}).find("--watch"), std::string::npos);
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {}, {"sumbit"}, {"status", "--bogus"}, {"logs", "1", "--tail"}, {"results"}, {"export", "1"}})
    EXPECT_EQ(error_of(args).find('\n'), std::string::npos) << error_of(args);
}

TEST(CliArgs, HelpListsEveryExitCode) {
  const std::string help = help_text();
  for (int code : {kOk, kServerError, kUsage, kUnreachable, kInvalidMatrix, kJobsFailed, kLocalIo})
    EXPECT_NE(help.find("\n  " + std::to_string(code) + "  "), std::string::npos) << code;
  for (const char* command : {"submit", "status", "results", "rerun", "cancel", "logs", "expand", "presets", "export"})
    EXPECT_NE(help.find(std::string("  ") + command), std::string::npos) << command;
  for (const char* option : {"--server", "--token", "--help", "--version", "RATIO_SERVER", "RATIO_TOKEN"})
    EXPECT_NE(help.find(option), std::string::npos) << option;
}

}  // namespace
}  // namespace ratio::cli
