// The solver table and the name lookup.
#include "plan/dsa_solver.h"

#include "core/error.h"

namespace memo::plan {

const char* to_string(Status status) {
  switch (status) {
    case Status::kOptimal: return "optimal";
    case Status::kFeasible: return "feasible";
    case Status::kInfeasible: return "infeasible";
    case Status::kTimeout: return "timeout";
    case Status::kUnknown: return "unknown";
  }
  return "?";
}

const std::vector<SolverInfo>& solvers() {
  static const std::vector<SolverInfo> table = {
      {"auto", "best-fit, then exact search if best-fit is above LOAD (or the capacity)",
       solve_auto},
      {"bestfit",
       "lowest-gap best-fit over several buffer orders (also with the buffers alive at peak "
       "load stacked first) plus randomized ones",
       solve_bestfit},
      {"exact",
       "branch and bound over canonical placements (proves optimal/infeasible; above 3000 "
       "buffers it falls back to best-fit)",
       solve_exact},
  };
  return table;
}

SolveResult solve(std::string_view name, const Problem& problem, const SolveOptions& options) {
  check_limits(problem, "DSA problem");
  std::string known;
  for (const SolverInfo& info : solvers()) {
    if (info.name == name) return info.solve(problem, options);
    known += cat(known.empty() ? "" : ", ", info.name);
  }
  throw InputError(cat("unknown solver '", name, "' (known: ", known, ")"));
}

}  // namespace memo::plan
