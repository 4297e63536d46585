#include "daemon/decide.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <stdexcept>

namespace ratio {
namespace {

// Regularised incomplete beta I_x(a, b) by its continued fraction (modified Lentz), the standard
// route for the t distribution's tail; converges fast for x < (a + 1)/(a + b + 2), else use symmetry.
double beta_continued_fraction(double a, double b, double x) {
  constexpr double kTiny = 1e-300, kEps = 1e-15;
  double c = 1.0, d = 1.0 - (a + b) * x / (a + 1.0);
  if (std::abs(d) < kTiny) d = kTiny;
  d = 1.0 / d;
  double h = d;
  for (int m = 1; m <= 500; ++m) {
    const double m2 = 2.0 * m;
    double numerator = m * (b - m) * x / ((a + m2 - 1.0) * (a + m2));
    for (int half = 0; half < 2; ++half) {
      d = 1.0 + numerator * d;
      if (std::abs(d) < kTiny) d = kTiny;
      c = 1.0 + numerator / c;
      if (std::abs(c) < kTiny) c = kTiny;
      d = 1.0 / d;
      h *= d * c;
      numerator = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0));
    }
    if (std::abs(d * c - 1.0) < kEps) break;
  }
  return h;
}

double incomplete_beta(double a, double b, double x) {
  if (x <= 0.0) return 0.0;
  if (x >= 1.0) return 1.0;
  const double log_front = std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) + b * std::log1p(-x);
  if (x < (a + 1.0) / (a + b + 2.0)) return std::exp(log_front) * beta_continued_fraction(a, b, x) / a;
  return 1.0 - std::exp(log_front) * beta_continued_fraction(b, a, 1.0 - x) / b;
}

// P(T_df <= t).
double student_t_cdf(double t, int df) {
  const double tail = 0.5 * incomplete_beta(0.5 * df, 0.5, df / (df + t * t));  // P(T > |t|)
  return t >= 0 ? 1.0 - tail : tail;
}

std::string fmt(const char* format, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, format, value);
  return buffer;
}

}  // namespace

double student_t_quantile(double p, int df) {
  if (!(p > 0.0 && p < 1.0) || df < 1) throw std::invalid_argument("student_t_quantile: need 0 < p < 1 and df >= 1");
  if (p < 0.5) return -student_t_quantile(1.0 - p, df);
  double lo = 0.0, hi = 1.0;
  while (student_t_cdf(hi, df) < p) hi *= 2.0;  // df = 1 at p = 1 − 1e-6 needs about 3e5
  for (int i = 0; i < 200 && hi - lo > 1e-12 * std::max(1.0, hi); ++i) {
    const double mid = 0.5 * (lo + hi);
    (student_t_cdf(mid, df) < p ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

Decision decide_paired(const std::vector<double>& differences, const DecideOptions& options) {
  Decision out;
  out.n = static_cast<int>(differences.size());
  const int looks = std::max(options.max_seeds - 1, 1);
  const double alpha_per_look = (1.0 - options.confidence) / looks;
  out.look_confidence = 1.0 - alpha_per_look;
  const bool seeds_left = out.n < options.max_seeds;
  if (out.n < 2) {
    if (out.n == 1) out.mean = differences[0];
    out.outcome = seeds_left ? "open" : "undecided";
    out.reason = std::to_string(out.n) + " paired seed(s): an interval needs 2";
    return out;
  }
  const double n = out.n;
  const double mean = std::accumulate(differences.begin(), differences.end(), 0.0) / n;
  double squares = 0.0;
  for (double d : differences) squares += (d - mean) * (d - mean);
  const double half_width = student_t_quantile(1.0 - alpha_per_look / 2.0, out.n - 1) * std::sqrt(squares / (n - 1) / n);
  out.mean = mean;
  out.lower = mean - half_width;
  out.upper = mean + half_width;

  const std::string interval = "Δ " + fmt("%+.4f", mean) + " in [" + fmt("%+.4f", *out.lower) + ", " +
                               fmt("%+.4f", *out.upper) + "] over " + std::to_string(out.n) + " paired seeds (" +
                               fmt("%.4g", 100.0 * out.look_confidence) + " % at this look, " +
                               fmt("%.4g", 100.0 * options.confidence) + " % for the whole sequence)";
  const double m = options.min_effect;
  if (*out.upper < -m) {
    out.outcome = "better";
    out.reason = "better by more than " + fmt("%g", m) + ": " + interval;
  } else if (*out.lower > 0.0) {
    out.outcome = "not_better";
    out.reason = "worse: " + interval;
  } else if (*out.lower > -m && *out.upper < m) {
    out.outcome = "not_better";
    out.reason = "no effect as large as " + fmt("%g", m) + ": " + interval;
  } else {
    out.outcome = seeds_left ? "open" : "undecided";
    out.reason = (seeds_left ? "open: " : "undecided after max_seeds " + std::to_string(options.max_seeds) + ": ") + interval;
  }
  return out;
}

}  // namespace ratio
