// parse_args: every command's forms, the global options and their environment defaults, and the
// one-line errors for bad command lines.
#include "cli/args.h"

#include <gtest/gtest.h>

namespace ratio::cli {
namespace {

Command parse(std::vector<std::string> args, const char* server = nullptr, const char* token = nullptr) {
  return parse_args(args, server, token);
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
  EXPECT_NE(error_of({"submit", "a.yaml", "--preset", "demo"}).find("usage"), std::string::npos);
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

TEST(CliArgs, HelpAnywhere) {
  EXPECT_EQ(parse({"--help"}).name, "help");
  EXPECT_EQ(parse({"results", "-h"}).name, "help");
  EXPECT_EQ(parse({"help"}).name, "help");
}

TEST(CliArgs, ErrorsNameTheProblemAndTheFix) {
  EXPECT_NE(error_of({}).find("no command given; try `ratio --help`"), std::string::npos);
  EXPECT_NE(error_of({"sumbit"}).find("unknown command 'sumbit'"), std::string::npos);
  EXPECT_NE(error_of({"status", "--bogus"}).find("unknown option '--bogus'"), std::string::npos);
  EXPECT_NE(error_of({"status", "--csv"}).find("option --csv does not apply to `ratio status`"), std::string::npos);
  EXPECT_NE(error_of({"results", "abc"}).find("MATRIX must be a numeric id"), std::string::npos);
  EXPECT_NE(error_of({"logs", "1", "--tail"}).find("--tail needs a value"), std::string::npos);
  EXPECT_NE(error_of({"logs", "1", "--tail", "x"}).find("--tail expects a number"), std::string::npos);
  EXPECT_NE(error_of({"--server", "localhost:8080", "status"}).find("--server must be a URL like http://"),
            std::string::npos);
  EXPECT_NE(error_of({"status", "--watch=yes"}).find("--watch takes no value"), std::string::npos);
}

TEST(CliArgs, HelpListsEveryExitCode) {
  const std::string help = help_text();
  for (int code : {kOk, kServerError, kUsage, kUnreachable, kInvalidMatrix, kJobsFailed, kLocalIo})
    EXPECT_NE(help.find("\n  " + std::to_string(code) + "  "), std::string::npos) << code;
  for (const char* command : {"submit", "status", "results", "rerun", "cancel", "logs", "expand", "presets", "export"})
    EXPECT_NE(help.find(std::string("  ") + command), std::string::npos) << command;
}

}  // namespace
}  // namespace ratio::cli
