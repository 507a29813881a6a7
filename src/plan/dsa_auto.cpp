// The default solver: best-fit first; if that reaches LOAD (or fits the
// capacity) it is the answer, otherwise the exact search takes over for the
// rest of the time limit, starting from the best-fit packing.
#include <algorithm>

#include "plan/dsa_internal.h"
#include "plan/dsa_solver.h"

namespace memo::plan {

SolveResult solve_auto(const Problem& problem, const SolveOptions& options) {
  detail::Deadline deadline(options.time_limit_s);
  SolveResult fit = solve_bestfit(problem, options);
  bool fits = !options.capacity || fit.peak <= *options.capacity;
  bool done = fit.status == Status::kOptimal || fit.status == Status::kInfeasible ||
              (options.capacity && fits);
  // Too large to search: best-fit's verdict stands (feasible, or unknown at
  // a capacity it missed).
  if (done || problem.buffers.size() > detail::kMaxExactBuffers) return fit;
  if (deadline.left() <= 0) {
    fit.status = Status::kTimeout;
    return fit;
  }
  SolveOptions rest = options;
  rest.time_limit_s = deadline.left();
  SolveResult exact = detail::exact_search(problem, rest, &fit);
  exact.nodes += fit.nodes;
  exact.seconds = deadline.elapsed();
  return exact;
}

}  // namespace memo::plan
