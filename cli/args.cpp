#include "cli/args.h"

#include <algorithm>
#include <map>

#include <CLI/CLI.hpp>

#include "ratio/build_info.h"

namespace ratio::cli {
namespace {

const char* kFooter = R"(
Run `ratio COMMAND --help` for a command's arguments and options. Options may come before or after the
command; --flag=value works as well as --flag value.

Exit codes:
  0  success
  1  ratiod answered with an error
  2  bad command line
  3  ratiod not reachable at the server URL
  4  the matrix file or preset is invalid
  5  --watch: the matrix finished with failed or cancelled jobs
  6  a local file could not be read or written
)";

// The command line's values before the checks across options.
struct Parsed {
  Command cmd;
  bool json = false;
  bool csv = false;
  std::map<std::string, std::string> usage;  // command -> its usage line, for errors
};

CLI::App* add_command(CLI::App& app, Parsed& p, const std::string& name, const std::string& usage,
                      const std::string& description) {
  CLI::App* sub = app.add_subcommand(name, description);
  sub->fallthrough();  // --server and --token also after the command
  sub->callback([&p, name] { p.cmd.name = name; });
  p.usage[name] = usage;
  return sub;
}

void add_interval(CLI::App* sub, Command& cmd) {
  sub->add_option("--interval", cmd.interval_s, "seconds between polls")
      ->type_name("S")->check(CLI::NonNegativeNumber)->capture_default_str();
}

// The whole command line. A new option is one add_option/add_flag line on its command.
void build(CLI::App& app, Parsed& p) {
  Command& cmd = p.cmd;
  app.description("ratio: submit and follow RATIO ablation matrices on a ratiod daemon.");
  app.name("ratio");
  app.get_formatter()->column_width(28);
  app.option_defaults()->disable_flag_override();  // --watch=yes is a mistake, not a synonym
  app.set_version_flag("--version", version_text("ratio"), "print the version and build id, then exit");
  app.add_option("--server", cmd.server, "ratiod's address")
      ->envname("RATIO_SERVER")->type_name("URL")->default_str(kDefaultServer);
  app.add_option("--token", cmd.token, "bearer token for mutating calls")->envname("RATIO_TOKEN")->type_name("TOKEN");
  app.require_subcommand(0, 1);
  app.allow_extras();  // unknown words and options are reported by check_extras, in our words

  CLI::App* submit = add_command(app, p, "submit", "submit FILE|--preset NAME [--force] [--watch]",
                                 "submit a matrix (YAML/JSON); prints the new matrix id as stdout's last line");
  submit->add_option("FILE", cmd.file, "the matrix file");
  submit->add_option("--preset", cmd.preset, "a built-in preset instead of FILE (ratio presets)")->type_name("NAME");
  submit->add_flag("--force", cmd.force, "rerun configs whose results are cached");
  submit->add_flag("--watch", cmd.watch, "follow progress on stderr until every job ended");
  add_interval(submit, cmd);

  CLI::App* status = add_command(app, p, "status", "status [MATRIX] [--watch]",
                                 "all matrices, or one matrix's jobs (status, iter/max_iters, last loss)");
  status->add_option("MATRIX", cmd.matrix, "a matrix id");
  status->add_flag("--watch", cmd.watch, "redraw until every job ended");
  add_interval(status, cmd);

  CLI::App* results = add_command(app, p, "results", "results MATRIX [--json|--csv]",
                                  "comparison table with deltas, efficiency and KEEP/REMOVE/INVESTIGATE verdicts");
  results->add_option("MATRIX", cmd.matrix, "a matrix id")->required();
  results->add_flag("--json", p.json, "the API's answer unchanged");
  results->add_flag("--csv", p.csv, "one CSV row per step");

  CLI::App* rerun = add_command(app, p, "rerun", "rerun MATRIX [--failed] | rerun --job ID",
                                "requeue a matrix's failed and cancelled jobs, or one job (a new attempt)");
  rerun->add_option("MATRIX", cmd.matrix, "a matrix id");
  rerun->add_flag("--failed", cmd.failed_only, "failed jobs only, not cancelled ones");
  rerun->add_option("--job", cmd.job, "rerun this one job instead")->type_name("ID");

  CLI::App* cancel = add_command(app, p, "cancel", "cancel JOB | cancel --matrix ID",
                                 "cancel one job, or every queued and running job of a matrix");
  cancel->add_option("JOB", cmd.job, "a job id");
  cancel->add_option("--matrix", cmd.matrix, "cancel this matrix's jobs instead")->type_name("ID");

  CLI::App* logs = add_command(app, p, "logs", "logs JOB [-f] [--tail N]", "the job's current attempt log");
  logs->add_option("JOB", cmd.job, "a job id")->required();
  logs->add_flag("-f,--follow", cmd.follow, "keep printing what the log grows by until the job ends");
  logs->add_option("--tail", cmd.tail, "the last N lines")->type_name("N")->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  add_interval(logs, cmd);

  CLI::App* expand = add_command(app, p, "expand", "expand FILE|--preset NAME [--json]",
                                 "resolve a matrix into its jobs with parameter counts and lint warnings (local)");
  expand->add_option("FILE", cmd.file, "the matrix file");
  expand->add_option("--preset", cmd.preset, "a built-in preset instead of FILE")->type_name("NAME");
  expand->add_flag("--json", p.json, "the expansion as JSON");

  add_command(app, p, "presets", "presets", "list the built-in presets (local)");

  CLI::App* exp = add_command(app, p, "export", "export MATRIX DIR",
                              "write DIR/<matrix>_results_YYYYMMDD_HHMMSS/ with one JSON per step and summaries");
  exp->add_option("MATRIX", cmd.matrix, "a matrix id")->required();
  exp->add_option("DIR", cmd.dir, "where to create the results folder")->required();

  add_command(app, p, "help", "help", "this text");
  app.footer(kFooter);  // after the commands, which would inherit it
}

void require_id(const std::string& what, const std::string& value) {
  if (value.empty() || !std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; }))
    throw UsageError(what + " must be a numeric id (see `ratio status`), got '" + value + "'");
}

// Arguments CLI11 did not place: an unknown command, an option of another command, a stray word.
void check_extras(const CLI::App& app, const Parsed& p) {
  const std::vector<std::string> extras = app.remaining(true);
  if (extras.empty()) return;
  const std::string& first = extras.front();
  const std::string& name = p.cmd.name;
  if (first.rfind("-", 0) != 0) {
    if (name.empty())
      throw UsageError("unknown command '" + first +
                       "'; commands: submit status results rerun cancel logs expand presets export (ratio --help)");
    throw UsageError("unexpected argument '" + first + "'; usage: ratio " + p.usage.at(name) + " (ratio " + name +
                     " --help)");
  }
  const std::string flag = first.substr(0, first.find('='));
  for (const CLI::App* sub : app.get_subcommands({})) {
    if (sub->get_name() != name && sub->get_option_no_throw(flag))
      throw UsageError("option " + flag + " does not apply to `ratio " + name + "` (ratio " +
                       (name.empty() ? "" : name + " ") + "--help)");
  }
  throw UsageError("unknown option '" + flag + "' (ratio --help)");
}

// Checks across options and arguments that CLI11's per-option checks cannot express.
void check_command(Parsed& p) {
  Command& cmd = p.cmd;
  const std::string& n = cmd.name;
  auto usage = [&] { return "usage: ratio " + p.usage.at(n) + " (ratio " + n + " --help)"; };
  if (n.empty()) throw UsageError("no command given; try `ratio --help`");
  if (p.json && p.csv) throw UsageError("choose one output format: --json or --csv");
  cmd.format = p.json ? "json" : p.csv ? "csv" : "table";
  if ((n == "submit" || n == "expand") && cmd.file.empty() == cmd.preset.empty())
    throw UsageError("give a FILE or --preset NAME, not both or neither; " + usage());
  if (n == "rerun" && cmd.job.empty() == cmd.matrix.empty())
    throw UsageError("give a MATRIX or --job ID; " + usage());
  if (n == "rerun" && !cmd.job.empty() && cmd.failed_only)
    throw UsageError("rerun --job ID reruns one job; --failed applies to a MATRIX");
  if (n == "cancel" && cmd.job.empty() == cmd.matrix.empty())
    throw UsageError("give a JOB or --matrix ID; " + usage());
  if (!cmd.matrix.empty()) require_id("MATRIX", cmd.matrix);
  if (!cmd.job.empty()) require_id("JOB", cmd.job);
  if (cmd.server.rfind("http://", 0) != 0 && cmd.server.rfind("https://", 0) != 0)
    throw UsageError("--server must be a URL like http://127.0.0.1:8080, got '" + cmd.server + "'");
  while (cmd.server.size() > 8 && cmd.server.back() == '/') cmd.server.pop_back();
}

}  // namespace

Command parse_args(const std::vector<std::string>& args) {
  Parsed p;
  p.cmd.server = kDefaultServer;
  CLI::App app;
  build(app, p);
  try {
    std::vector<std::string> reversed(args.rbegin(), args.rend());  // CLI11 consumes argv from the back
    app.parse(reversed);
  } catch (const CLI::CallForHelp&) {
    p.cmd.name = "help";
    p.cmd.text = app.help();  // the command's own help when one was given
    return p.cmd;
  } catch (const CLI::CallForVersion&) {
    p.cmd.name = "version";
    p.cmd.text = version_text("ratio");
    return p.cmd;
  } catch (const CLI::ParseError& e) {
    const std::vector<CLI::App*> commands = app.get_subcommands();
    const std::string name = commands.empty() ? "" : commands.front()->get_name();
    throw UsageError(std::string(e.what()) +
                     (name.empty() ? " (ratio --help)" : "; usage: ratio " + p.usage.at(name) + " (ratio " + name + " --help)"));
  }
  check_extras(app, p);
  if (p.cmd.name == "help") {
    p.cmd.text = help_text();
    return p.cmd;
  }
  check_command(p);
  return p.cmd;
}

std::string help_text() {
  Parsed p;
  CLI::App app;
  build(app, p);
  return app.help();
}

}  // namespace ratio::cli
