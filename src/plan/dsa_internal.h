// Shared by the solver implementations (not part of the public plan/ API):
// time compression into sections, a deadline clock, and the skyline greedy.
#pragma once

#include <chrono>
#include <cstdint>
#include <vector>

#include "plan/dsa_problem.h"
#include "plan/dsa_solver.h"

namespace memo::plan::detail {

// The time axis cut at every lower/upper; section s is [times[s], times[s+1]).
// Buffer b is alive exactly in sections [first[b], last[b]).
struct Sections {
  std::vector<int64_t> times;
  std::vector<int> first, last;
  int count() const { return times.empty() ? 0 : static_cast<int>(times.size()) - 1; }
};
Sections make_sections(const Problem& problem);

class Deadline {
 public:
  explicit Deadline(double seconds)
      : start_(std::chrono::steady_clock::now()), limit_(seconds) {}
  double elapsed() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  bool passed() const { return elapsed() >= limit_; }
  double left() const { return limit_ - elapsed(); }

 private:
  std::chrono::steady_clock::time_point start_;
  double limit_;
};

// Sweep best-fit (dsa_sweep.cpp): buffers allocated in time order into the
// smallest free gap that holds them, as an online allocator would. O(n log n)
// on any instance: the packing in hand before the slower greedy runs.
Offsets sweep_fit(const Problem& problem);

// Lowest-gap greedy ("skyline best-fit"): repeatedly take the lowest stretch of
// the current skyline and put there the buffer of smallest rank[] that fits
// inside it in time; if none fits, the stretch is raised to its lower
// neighbour (wasting that space). Returns offsets for every buffer.
// With `fixed`, the buffers whose fixed[] offset is not kNoOffset keep it and
// the others are packed around them (the skyline jumps over them, and space
// below one that nothing fits into is wasted).
// With `deadline`, a run that reaches it stops and returns an empty Offsets
// (a run costs up to O(n^2) scans on wide instances).
Offsets skyline_fit(const Problem& problem, const Sections& sections,
                    const std::vector<int>& rank, const Offsets* fixed = nullptr,
                    const Deadline* deadline = nullptr);

// Pre-placements for skyline_fit (dsa_anchor.cpp): the buffers alive at the
// first time of maximum load stacked from offset 0 (nothing else placed), one
// per stacking order: latest end at the bottom, earliest start at the bottom,
// longest lifetime at the bottom. Empty for an empty problem.
std::vector<Offsets> peak_anchors(const Problem& problem, const Sections& sections);

// rank[] from a permutation (order[k] = the buffer placed with priority k).
std::vector<int> rank_of(const std::vector<int>& order);

// Branch and bound (dsa_exact.cpp), starting from `incumbent` if given (its
// peak is the bound to beat when there is no capacity).
SolveResult exact_search(const Problem& problem, const SolveOptions& options,
                         const SolveResult* incumbent);

// Larger problems are not searched exactly (see exact_search).
inline constexpr size_t kMaxExactBuffers = 3000;

}  // namespace memo::plan::detail
