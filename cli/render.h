#pragma once
// Text renderings of API answers: aligned tables for people, CSV for spreadsheets. Pure functions of
// JSON, so tests check them on hand-built answers.

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace ratio::cli {

// Columns padded to their widest cell; cells in `right_aligned` columns (numbers) align right.
std::string format_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows,
                         const std::vector<bool>& right_aligned);

// RFC 4180: quoted when the cell holds a comma, quote or line break; quotes doubled.
std::string csv_cell(const std::string& cell);

// GET /api/matrices/{id}/results -> the comparison table followed by one verdict reason per step.
std::string render_results_table(const nlohmann::json& results);
// The same rows as CSV with a header line (alphas as name=value;..., dead_params joined by ';').
std::string render_results_csv(const nlohmann::json& results);

// One matrix's progress (GET /api/matrices/{id} plus the last train loss per job id, when known).
std::string render_matrix_status(const nlohmann::json& matrix, const std::map<int64_t, double>& last_loss);
// GET /api/matrices -> one line per matrix with its counts.
std::string render_matrix_list(const nlohmann::json& matrices);

// `ratio expand` without --json: the jobs with their parameter counts, then the lint warnings.
std::string render_expansion(const nlohmann::json& expansion);

// Cuts every line to fewer than `columns` screen columns (UTF-8 aware); columns <= 1 = unchanged.
// --watch redraws in place by moving the cursor up one row per line, which a wrapped line would break.
std::string clip_lines(const std::string& text, int columns);

// 124439808 -> "124.44M", 12 -> "12", -500000 -> "-500.0K".
std::string human_count(int64_t n);

}  // namespace ratio::cli
