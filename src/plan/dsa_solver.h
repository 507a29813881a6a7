// One interface for the DSA solvers: options in, offsets and a status out.
// Solvers are plain functions in a table and are chosen by name
// ("auto", "bestfit", "exact"); see solvers().
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "plan/dsa_problem.h"

namespace memo::plan {

enum class Status {
  kOptimal,     // peak proven minimal (it equals LOAD, or the search was exhaustive)
  kFeasible,    // a packing was found (within the capacity, if one was given)
  kInfeasible,  // proven: no packing fits within the capacity
  kTimeout,     // a time or node limit stopped the search before a proof
  kUnknown,     // a heuristic found no packing within the capacity; nothing proven
};
const char* to_string(Status status);

struct SolveOptions {
  std::optional<int64_t> capacity;  // if set: find a packing with peak <= capacity
  double time_limit_s = 10.0;       // wall-clock limit for searching solvers
  int64_t node_limit = 0;           // exact search nodes; 0 = no limit
  uint64_t seed = 1;                // randomized tie-breaks are reproducible
};

struct SolveResult {
  bool found = false;  // whether `offsets` holds a packing (maybe above the capacity)
  Offsets offsets;     // the best packing found
  int64_t peak = 0;
  int64_t load = 0;
  Status status = Status::kUnknown;
  double seconds = 0.0;
  int64_t nodes = 0;  // search nodes (exact) or greedy runs (bestfit)
};

using SolveFn = SolveResult (*)(const Problem&, const SolveOptions&);

struct SolverInfo {
  std::string_view name;
  std::string_view description;
  SolveFn solve;
};

// The solver table, default ("auto") first.
const std::vector<SolverInfo>& solvers();

// Runs the solver called `name`; unknown names are an InputError.
SolveResult solve(std::string_view name, const Problem& problem, const SolveOptions& options);

SolveResult solve_bestfit(const Problem& problem, const SolveOptions& options);
SolveResult solve_exact(const Problem& problem, const SolveOptions& options);
SolveResult solve_auto(const Problem& problem, const SolveOptions& options);

}  // namespace memo::plan
