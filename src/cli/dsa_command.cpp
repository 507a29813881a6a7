// `memo dsa`: solve one offset-assignment (DSA) instance from a minimalloc CSV,
// or benchmark every CSV under a folder (`--bench DIR`). Every packing is
// checked by the naive validator before it is printed or written.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/strict_numbers.h"
#include "core/error.h"
#include "core/files.h"
#include "core/json.h"
#include "core/units.h"
#include "plan/dsa_problem.h"
#include "plan/dsa_solver.h"
#include "plan/dsa_validate.h"

namespace memo::cli {
namespace {

namespace fs = std::filesystem;
using plan::SolveResult;

struct DsaOptions {
  std::string file;
  std::string bench_dir;
  std::optional<int64_t> capacity;
  std::string solver = "auto";
  double time_limit_s = 10.0;
  uint64_t seed = 1;
  std::string out;
  std::string json;
};

struct Row {
  std::string instance;
  size_t buffers = 0;
  std::optional<int64_t> capacity;
  SolveResult result;
  double read_s = 0.0;   // parsing the CSV
  double check_s = 0.0;  // validating the packing
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// minimalloc's challenging files are named X.<capacity>.csv.
std::optional<int64_t> capacity_from_name(const fs::path& path) {
  std::string middle = path.stem().extension().string();  // ".<digits>" or ""
  if (middle.size() < 2 || middle.size() > 19) return std::nullopt;
  if (!std::all_of(middle.begin() + 1, middle.end(), [](unsigned char c) { return std::isdigit(c); }))
    return std::nullopt;
  return std::stoll(middle.substr(1));
}

Row solve_file(const std::string& path, const std::string& name, std::optional<int64_t> capacity,
               const DsaOptions& opts, plan::Offsets* offsets_out, plan::Problem* problem_out) {
  // --time-limit covers reading and solving; the solver gets what reading
  // left (it always ends with a packing: its first one takes O(n log n)).
  const auto t0 = std::chrono::steady_clock::now();
  plan::CsvContents csv = plan::read_csv(path);
  const double read_s = seconds_since(t0);
  plan::SolveOptions options;
  options.capacity = capacity;
  options.time_limit_s = std::max(1e-3, opts.time_limit_s - read_s);
  options.seed = opts.seed;
  Row row{name, csv.problem.buffers.size(), capacity,
          plan::solve(opts.solver, csv.problem, options), read_s, 0.0};
  if (row.result.found) {
    const auto t1 = std::chrono::steady_clock::now();
    plan::Validation check = plan::validate(csv.problem, row.result.offsets);
    row.check_s = seconds_since(t1);
    if (!check.ok())
      throw Error(cat("solver '", opts.solver, "' produced an invalid packing for ", path, ": ",
                      check.summary()));
  }
  if (offsets_out) *offsets_out = row.result.offsets;
  if (problem_out) *problem_out = std::move(csv.problem);
  return row;
}

std::string ratio_text(const Row& row) {
  if (!row.result.found) return "-";
  if (row.result.load == 0) return row.result.peak == 0 ? "1.0000" : "inf";
  return strf("%.4f", static_cast<double>(row.result.peak) / row.result.load);
}

nlohmann::json to_json(const Row& row) {
  nlohmann::json j = {{"instance", row.instance},
                      {"buffers", row.buffers},
                      {"load", row.result.load},
                      {"status", plan::to_string(row.result.status)},
                      {"seconds", row.result.seconds},
                      {"read_seconds", row.read_s},
                      {"check_seconds", row.check_s}};
  j["peak"] = row.result.found ? nlohmann::json(row.result.peak) : nlohmann::json(nullptr);
  j["capacity"] = json_or_null(row.capacity);
  return j;
}

int run_single(const DsaOptions& opts) {
  plan::Offsets offsets;
  plan::Problem problem;
  Row row = solve_file(opts.file, opts.file, opts.capacity, opts, &offsets, &problem);
  const SolveResult& r = row.result;
  std::printf("instance   %s\n", row.instance.c_str());
  std::printf("buffers    %zu\n", row.buffers);
  std::printf("LOAD       %lld\n", static_cast<long long>(r.load));
  if (row.capacity) std::printf("capacity   %lld\n", static_cast<long long>(*row.capacity));
  if (r.found)
    std::printf("peak       %lld\n", static_cast<long long>(r.peak));
  else
    std::printf("peak       - (no packing found)\n");
  std::printf("peak/LOAD  %s\n", ratio_text(row).c_str());
  std::printf("solver     %s\n", opts.solver.c_str());
  std::printf("status     %s\n", plan::to_string(r.status));
  std::printf("time       %s (solver; reading %s, checking %s)\n", format_seconds(r.seconds).c_str(),
              format_seconds(row.read_s).c_str(), format_seconds(row.check_s).c_str());
  if (!opts.out.empty()) {
    require_input(r.found, "no packing found, so nothing was written to '", opts.out, "'");
    write_file_atomic(opts.out, plan::to_csv(problem, offsets));
  }
  if (!opts.json.empty()) write_file_atomic(opts.json, to_json(row).dump(2) + "\n");
  return 0;
}

int run_bench(const DsaOptions& opts) {
  std::vector<fs::path> files;
  try {
    for (const auto& entry : fs::recursive_directory_iterator(opts.bench_dir))
      if (entry.is_regular_file() && entry.path().extension() == ".csv") files.push_back(entry.path());
  } catch (const fs::filesystem_error& e) {
    throw InputError(cat("--bench ", opts.bench_dir, ": cannot list ",
                         e.path1().empty() ? opts.bench_dir : e.path1().string(), " (", e.code().message(), ")"));
  }
  std::sort(files.begin(), files.end());
  require_input(!files.empty(), "no .csv files under '", opts.bench_dir, "'");

  std::vector<Row> rows;
  for (size_t k = 0; k < files.size(); ++k) {
    std::string name = fs::relative(files[k], opts.bench_dir).string();
    std::optional<int64_t> capacity = capacity_from_name(files[k]);
    if (!capacity) capacity = opts.capacity;
    std::fprintf(stderr, "[%zu/%zu] %s ...\n", k + 1, files.size(), name.c_str());
    rows.push_back(solve_file(files[k].string(), name, capacity, opts, nullptr, nullptr));
  }

  std::printf("| instance | buffers | LOAD | capacity | peak | peak/LOAD | status | seconds |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---|---:|\n");
  for (const Row& row : rows) {
    std::printf("| %s | %zu | %lld | %s | %s | %s | %s | %.2f |\n", row.instance.c_str(),
                row.buffers, static_cast<long long>(row.result.load),
                row.capacity ? std::to_string(*row.capacity).c_str() : "-",
                row.result.found ? std::to_string(row.result.peak).c_str() : "-",
                ratio_text(row).c_str(), plan::to_string(row.result.status), row.result.seconds);
  }
  if (!opts.json.empty()) {
    nlohmann::json list = nlohmann::json::array();
    for (const Row& row : rows) list.push_back(to_json(row));
    write_file_atomic(opts.json, list.dump(2) + "\n");
  }
  return 0;
}

}  // namespace

void add_dsa_command(CLI::App& root, Action& action) {
  auto opts = std::make_shared<DsaOptions>();
  std::string solver_names;
  std::vector<std::string> names;
  for (const auto& info : plan::solvers()) {
    names.emplace_back(info.name);
    solver_names += cat("\n  ", info.name, ": ", info.description);
  }

  CLI::App* cmd = root.add_subcommand(
      "dsa",
      "Assign offsets to buffers with known lifetimes (dynamic storage allocation).\n"
      "Input: minimalloc CSV, header `id,lower,upper,size[,alignment]`, lifetimes half-open\n"
      "[lower, upper). Prints the number of buffers, LOAD (most bytes alive at once, a lower\n"
      "bound), the peak found, peak/LOAD, the time and a status:\n"
      "  optimal     the peak is proven minimal (it equals LOAD, or the search was exhaustive)\n"
      "  feasible    a packing within the capacity was found (or, without --capacity, a\n"
      "              heuristic packing; nothing proven about optimality)\n"
      "  infeasible  proven: no packing fits within --capacity\n"
      "  timeout     the time limit ended the search before a proof (best packing is kept)\n"
      "  unknown     best-fit alone missed the capacity; nothing proven");
  cmd->add_option("file", opts->file, "Instance CSV to solve")->check(CLI::ExistingFile);
  auto* bench = cmd->add_option("--bench", opts->bench_dir,
                                "Solve every .csv under DIR (recursively) and print one table row "
                                "each; files named X.<N>.csv are solved at capacity N")
                    ->check(CLI::ExistingDirectory);
  cmd->add_option("--capacity", opts->capacity,
                  "Answer whether a packing with peak <= N exists (and find one)");
  cmd->add_option("--solver", opts->solver, "Solver:" + solver_names)
      ->check(CLI::IsMember(names))
      ->capture_default_str();
  cmd->add_option("--time-limit", opts->time_limit_s,
                  "Seconds per instance for the solver (reading the file and checking the packing "
                  "come on top)")
      ->capture_default_str();
  cmd->add_option("--seed", opts->seed, "Seed of the randomized tie-breaks")->capture_default_str();
  auto* out = cmd->add_option("--out", opts->out, "Write the packing as CSV (with an offset column)");
  cmd->add_option("--json", opts->json,
                  "Write {buffers, load, peak, status, seconds} as JSON (with --bench: a list "
                  "of rows)");
  out->excludes(bench);
  strict_numbers(cmd);

  cmd->callback([opts, &action] {
    if (opts->file.empty() == opts->bench_dir.empty())
      throw CLI::ValidationError("memo dsa", "give exactly one of FILE or --bench DIR");
    action = [opts] {
      require_input(opts->time_limit_s > 0, "--time-limit must be a positive number of seconds, got ",
                    opts->time_limit_s);
      require_input(!opts->capacity || *opts->capacity >= 0, "--capacity must be >= 0, got ",
                    opts->capacity.value_or(0));
      const NamedPath input = opts->bench_dir.empty() ? NamedPath{"FILE", opts->file}
                                                      : NamedPath{"--bench", opts->bench_dir};
      check_outputs({{"--out", opts->out}, {"--json", opts->json}}, {input});
      return opts->bench_dir.empty() ? run_single(*opts) : run_bench(*opts);
    };
  });
}

}  // namespace memo::cli
