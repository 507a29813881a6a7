// Best-fit solver: the lowest-gap ("skyline") greedy run over several buffer
// orders (lifetime length, size, area, start time), then the best of them
// again around the buffers of the maximum-load time pre-placed
// (dsa_anchor.cpp), then over randomly perturbed orders while time is left,
// keeping the lowest peak. Under a time limit (no node limit), the O(n log n)
// sweep best-fit (dsa_sweep.cpp) runs first, so that a packing is in hand
// however large the instance, and every greedy run stops at the deadline.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "plan/dsa_internal.h"
#include "plan/dsa_solver.h"

namespace memo::plan {

namespace {

using detail::Sections;

// The fixed orders, each a strict weak order "place a before b" on keys
// computed once per buffer; built one at a time, so that under a time limit
// the orders not run are not built either.
constexpr int kBaseOrders = 7;

std::vector<int> base_order(const Problem& problem, int which) {
  const auto& bufs = problem.buffers;
  const size_t n = bufs.size();
  std::vector<int64_t> length(n), log_length(n), log_size(n);
  std::vector<double> area(n);
  for (size_t b = 0; b < n; ++b) {
    length[b] = bufs[b].upper - bufs[b].lower;
    area[b] = static_cast<double>(bufs[b].size) * static_cast<double>(length[b]);
    log_length[b] = static_cast<int>(std::log2(static_cast<double>(length[b])));
    log_size[b] = static_cast<int>(std::log2(1.0 + static_cast<double>(bufs[b].size)));
  }
  auto size = [&](int b) { return bufs[b].size; };
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  auto sort = [&](auto before) { std::stable_sort(order.begin(), order.end(), before); };
  switch (which) {
    case 0: sort([&](int a, int b) { return std::pair(length[a], size(a)) > std::pair(length[b], size(b)); }); break;
    case 1: sort([&](int a, int b) { return std::pair(size(a), length[a]) > std::pair(size(b), length[b]); }); break;
    case 2: sort([&](int a, int b) { return area[a] > area[b]; }); break;
    case 3: sort([&](int a, int b) { return std::pair(bufs[a].lower, -length[a]) < std::pair(bufs[b].lower, -length[b]); }); break;
    case 4: sort([&](int a, int b) { return std::pair(log_length[a], size(a)) > std::pair(log_length[b], size(b)); }); break;
    case 5: sort([&](int a, int b) { return std::pair(log_size[a], length[a]) > std::pair(log_size[b], length[b]); }); break;
    default: sort([&](int a, int b) { return std::pair(log_length[a] / 2, size(a)) > std::pair(log_length[b] / 2, size(b)); }); break;
  }
  return order;
}

}  // namespace

SolveResult solve_bestfit(const Problem& problem, const SolveOptions& options) {
  detail::Deadline deadline(options.time_limit_s);
  SolveResult result;
  result.load = load(problem);
  Sections sections;  // built before the first greedy run (a timed run on 10^6 buffers may have none)
  bool have_sections = false;
  auto sections_ = [&]() -> const Sections& {
    if (!have_sections) sections = detail::make_sections(problem), have_sections = true;
    return sections;
  };
  std::vector<int> best_order;          // the greedy run with the lowest peak: its order ...
  const Offsets* best_fixed = nullptr;  // ... and pre-placement
  int64_t best_run_peak = INT64_MAX;
  auto consider = [&](const Offsets& offsets, const std::vector<int>& order,
                      const Offsets* fixed) {
    ++result.nodes;
    int64_t p = peak(problem, offsets);
    if (p < best_run_peak) {
      best_run_peak = p;
      best_order = order;
      best_fixed = fixed;
    }
    if (!result.found || p < result.peak) {
      result.found = true;
      result.offsets = offsets;
      result.peak = p;
    }
  };
  auto good_enough = [&] {
    return result.found &&
           (result.peak <= result.load || (options.capacity && result.peak <= *options.capacity));
  };
  // A time limit binds every run only without a node limit (the memory
  // planner's node limit asks for the same result on every run) and when it
  // is positive (0: the fixed orders only, as the exact solver asks).
  const bool timed = options.node_limit <= 0 && options.time_limit_s > 0;
  const detail::Deadline* stop_at = timed ? &deadline : nullptr;
  const size_t n = problem.buffers.size();
  auto run = [&](const std::vector<int>& order, const Offsets* fixed) {
    Offsets offsets = detail::skyline_fit(problem, sections_(), detail::rank_of(order), fixed, stop_at);
    if (offsets.size() == n) consider(offsets, order, fixed);
  };

  if (problem.buffers.empty()) consider({}, {}, nullptr);
  if (timed && !problem.buffers.empty()) {
    // Kept only as the result: the orders below are what polishing mutates.
    Offsets swept = detail::sweep_fit(problem);
    ++result.nodes;
    const int64_t p = peak(problem, swept);
    result.found = true;
    result.offsets = std::move(swept);
    result.peak = p;
  }
  for (int k = 0; k < kBaseOrders; ++k) {
    if (good_enough() || (timed && deadline.passed())) break;
    run(base_order(problem, k), nullptr);
  }

  // What follows (anchored runs, then polish) stops when half the time limit
  // (at most 2 s) is spent, or after options.node_limit greedy runs in all
  // when that is set: a fixed number of runs gives the same result on every
  // run (the memory planner needs that).
  double budget = std::min(options.time_limit_s / 2, 2.0);
  auto more = [&] {
    return options.node_limit > 0 ? result.nodes < options.node_limit : deadline.elapsed() < budget;
  };

  // Then the best order again around the buffers alive at the time of
  // maximum load, pre-placed in a perfect stack (see dsa_anchor.cpp), once
  // per stacking order. This is what packs pangu_2.6B at LOAD, where every
  // plain order wastes space at its one-step peak.
  std::vector<Offsets> anchors;
  if (!good_enough() && more() && !best_order.empty()) anchors = detail::peak_anchors(problem, sections_());
  const std::vector<int> plain_best = best_order;
  for (const Offsets& fixed : anchors) {
    if (good_enough() || !more() || plain_best.empty()) break;
    run(plain_best, &fixed);
  }

  // Near misses (within 2% of the target, LOAD or the capacity) are polished
  // by iterated greedy: mutate the order that gave the best packing (with its
  // pre-placement, if any) with a few random nearby swaps and keep the mutant
  // if it packs as low or lower (so the walk drifts along plateaus).
  std::mt19937_64 rng(options.seed);
  int64_t target = std::max(result.load, options.capacity.value_or(0));
  bool near_miss = result.found && !best_order.empty() && result.peak <= target + target / 50;
  std::vector<int> incumbent = best_order;
  const Offsets* fixed = best_fixed;
  while (near_miss && !good_enough() && more()) {
    std::vector<int> order = incumbent;
    std::uniform_int_distribution<size_t> pick(0, order.size() - 1);
    size_t swaps = 1 + pick(rng) % (1 + order.size() / 200);
    for (size_t k = 0; k < swaps; ++k) {
      size_t i = pick(rng);
      size_t j = std::min(order.size() - 1, i + 1 + pick(rng) % 8);
      std::swap(order[i], order[j]);
    }
    Offsets offsets = detail::skyline_fit(problem, sections_(), detail::rank_of(order), fixed, stop_at);
    if (offsets.size() != n) break;  // the deadline
    if (peak(problem, offsets) <= best_run_peak) incumbent = order;
    consider(offsets, order, fixed);
  }

  if (result.found) {
    // LOAD above the capacity proves infeasibility whatever the packing
    // (capacity 0 with a non-empty buffer included).
    const bool fits = !options.capacity || result.peak <= *options.capacity;
    const bool proven_infeasible = options.capacity && result.load > *options.capacity;
    result.status = proven_infeasible                ? Status::kInfeasible
                    : result.peak <= result.load     ? Status::kOptimal
                    : fits                           ? Status::kFeasible
                    : timed && deadline.passed()     ? Status::kTimeout
                                                     : Status::kUnknown;
  }
  result.seconds = deadline.elapsed();
  return result;
}

}  // namespace memo::plan
