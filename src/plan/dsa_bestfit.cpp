// Best-fit solver: the lowest-gap ("skyline") greedy run over several buffer
// orders (lifetime length, size, area, start time) and then over randomly
// perturbed orders while time is left, keeping the lowest peak.
//
// Each greedy run is O(n log n) plus the scans of the buffers that start in
// the stretch being filled, fast enough for ~30k buffers.
#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "plan/dsa_internal.h"
#include "plan/dsa_solver.h"

namespace memo::plan {
namespace detail {

Sections make_sections(const Problem& problem) {
  Sections s;
  for (const Buffer& b : problem.buffers) {
    s.times.push_back(b.lower);
    s.times.push_back(b.upper);
  }
  std::sort(s.times.begin(), s.times.end());
  s.times.erase(std::unique(s.times.begin(), s.times.end()), s.times.end());
  auto index = [&](int64_t t) {
    return static_cast<int>(std::lower_bound(s.times.begin(), s.times.end(), t) - s.times.begin());
  };
  for (const Buffer& b : problem.buffers) {
    s.first.push_back(index(b.lower));
    s.last.push_back(index(b.upper));
  }
  return s;
}

std::vector<int> rank_of(const std::vector<int>& order) {
  std::vector<int> rank(order.size());
  for (size_t k = 0; k < order.size(); ++k) rank[order[k]] = static_cast<int>(k);
  return rank;
}

namespace {

// The skyline: maximal stretches of sections with equal height, keyed by their
// first section, plus an index by (height, first) to find the lowest.
class Skyline {
 public:
  struct Stretch {
    int end;
    int64_t height;
  };
  explicit Skyline(int sections) { set(0, sections, 0); }

  std::pair<int, Stretch> lowest() const {
    int start = by_height_.begin()->second;
    return {start, stretches_.at(start)};
  }

  // Sets sections [start, end) (inside the stretch at `at`) to `height`.
  void raise(int at, int start, int end, int64_t height) {
    Stretch old = stretches_.at(at);
    erase(at);
    if (at < start) set(at, start, old.height);
    set(start, end, height);
    if (end < old.end) set(end, old.end, old.height);
    merge(start);
  }

  // Raises the whole stretch at `at` to its lower neighbour's height.
  void fill_up(int at) {
    auto it = stretches_.find(at);
    int64_t target = INT64_MAX;
    if (it != stretches_.begin()) target = std::prev(it)->second.height;
    if (std::next(it) != stretches_.end())
      target = std::min(target, std::next(it)->second.height);
    raise(at, at, it->second.end, target);
  }

 private:
  void set(int start, int end, int64_t height) {
    stretches_[start] = {end, height};
    by_height_.insert({height, start});
  }
  void erase(int start) {
    by_height_.erase({stretches_.at(start).height, start});
    stretches_.erase(start);
  }
  // Joins the stretch at `start` with equal-height neighbours.
  void merge(int start) {
    auto it = stretches_.find(start);
    if (std::next(it) != stretches_.end() && std::next(it)->second.height == it->second.height) {
      int end = std::next(it)->second.end;
      erase(std::next(it)->first);
      by_height_.erase({it->second.height, start});
      set(start, end, it->second.height);
      it = stretches_.find(start);
    }
    if (it != stretches_.begin() && std::prev(it)->second.height == it->second.height) {
      int prev_start = std::prev(it)->first;
      int end = it->second.end;
      int64_t height = it->second.height;
      erase(start);
      erase(prev_start);
      set(prev_start, end, height);
    }
  }

  std::map<int, Stretch> stretches_;
  std::set<std::pair<int64_t, int>> by_height_;
};

}  // namespace

Offsets skyline_fit(const Problem& problem, const Sections& sections,
                    const std::vector<int>& rank) {
  const auto& bufs = problem.buffers;
  const int n = static_cast<int>(bufs.size());
  Offsets offsets(bufs.size(), kNoOffset);
  if (n == 0) return offsets;

  // Unplaced buffers by first section; `nonempty` skips empty lists quickly.
  std::vector<std::vector<int>> starting(sections.count());
  for (int b = 0; b < n; ++b) starting[sections.first[b]].push_back(b);
  std::set<int> nonempty;
  for (int s = 0; s < sections.count(); ++s)
    if (!starting[s].empty()) nonempty.insert(s);

  Skyline skyline(sections.count());
  for (int placed = 0; placed < n;) {
    auto [start, stretch] = skyline.lowest();
    int best = -1;
    for (auto it = nonempty.lower_bound(start); it != nonempty.end() && *it < stretch.end; ++it)
      for (int b : starting[*it])
        if (sections.last[b] <= stretch.end && (best < 0 || rank[b] < rank[best])) best = b;
    if (best < 0) {
      skyline.fill_up(start);
      continue;
    }
    int64_t offset = align_up(stretch.height, bufs[best].alignment);
    offsets[best] = offset;
    ++placed;
    auto& list = starting[sections.first[best]];
    list.erase(std::find(list.begin(), list.end(), best));
    if (list.empty()) nonempty.erase(sections.first[best]);
    skyline.raise(start, sections.first[best], sections.last[best], offset + bufs[best].size);
  }
  return offsets;
}

}  // namespace detail

namespace {

using detail::Sections;

// The fixed orders: each is a strict weak order "place a before b".
std::vector<std::vector<int>> base_orders(const Problem& problem) {
  const auto& bufs = problem.buffers;
  auto length = [&](int b) { return bufs[b].upper - bufs[b].lower; };
  auto area = [&](int b) { return static_cast<double>(bufs[b].size) * length(b); };
  std::vector<int> ids(bufs.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::vector<std::vector<int>> orders;
  auto add = [&](auto before) {
    std::vector<int> order = ids;
    std::stable_sort(order.begin(), order.end(), before);
    orders.push_back(std::move(order));
  };
  add([&](int a, int b) { return std::pair(length(a), bufs[a].size) > std::pair(length(b), bufs[b].size); });
  add([&](int a, int b) { return std::pair(bufs[a].size, length(a)) > std::pair(bufs[b].size, length(b)); });
  add([&](int a, int b) { return area(a) > area(b); });
  add([&](int a, int b) { return std::pair(bufs[a].lower, -length(a)) < std::pair(bufs[b].lower, -length(b)); });
  auto log_length = [&](int b) { return static_cast<int>(std::log2(static_cast<double>(length(b)))); };
  auto log_size = [&](int b) { return static_cast<int>(std::log2(1.0 + bufs[b].size)); };
  add([&](int a, int b) { return std::pair(log_length(a), bufs[a].size) > std::pair(log_length(b), bufs[b].size); });
  add([&](int a, int b) { return std::pair(log_size(a), length(a)) > std::pair(log_size(b), length(b)); });
  add([&](int a, int b) { return std::pair(log_length(a)/2, bufs[a].size) > std::pair(log_length(b)/2, bufs[b].size); });
  return orders;
}

}  // namespace

SolveResult solve_bestfit(const Problem& problem, const SolveOptions& options) {
  detail::Deadline deadline(options.time_limit_s);
  SolveResult result;
  result.load = load(problem);
  Sections sections = detail::make_sections(problem);
  std::vector<int> best_order;
  auto consider = [&](const Offsets& offsets, const std::vector<int>& order) {
    ++result.nodes;
    int64_t p = peak(problem, offsets);
    if (!result.found || p < result.peak) {
      result.found = true;
      result.offsets = offsets;
      result.peak = p;
      best_order = order;
    }
  };
  auto good_enough = [&] {
    return result.peak <= result.load || (options.capacity && result.peak <= *options.capacity);
  };

  auto orders = base_orders(problem);
  if (problem.buffers.empty()) consider({}, {});
  for (const auto& order : orders) {
    consider(detail::skyline_fit(problem, sections, detail::rank_of(order)), order);
    if (good_enough()) break;
  }

  // Near misses (within 2% of the target, LOAD or the capacity) are polished
  // by iterated greedy: mutate the order that gave the best packing with a
  // few random nearby swaps and keep the mutant if it packs as low or lower
  // (so the walk drifts along plateaus), until half the time limit (at most
  // 2 s) is spent, or until options.node_limit greedy runs when that is set.
  std::mt19937_64 rng(options.seed);
  double budget = std::min(options.time_limit_s / 2, 2.0);
  int64_t target = std::max(result.load, options.capacity.value_or(0));
  bool near_miss = result.found && result.peak <= target + target / 50;
  std::vector<int> incumbent = best_order;
  // A node limit makes the polish a fixed number of greedy runs, so the
  // result is the same on every run (the memory planner needs that).
  auto more = [&] {
    return options.node_limit > 0 ? result.nodes < options.node_limit : deadline.elapsed() < budget;
  };
  while (near_miss && !good_enough() && more()) {
    std::vector<int> order = incumbent;
    std::uniform_int_distribution<size_t> pick(0, order.size() - 1);
    size_t swaps = 1 + pick(rng) % (1 + order.size() / 200);
    for (size_t k = 0; k < swaps; ++k) {
      size_t i = pick(rng);
      size_t j = std::min(order.size() - 1, i + 1 + pick(rng) % 8);
      std::swap(order[i], order[j]);
    }
    Offsets offsets = detail::skyline_fit(problem, sections, detail::rank_of(order));
    if (peak(problem, offsets) <= result.peak) incumbent = order;
    consider(offsets, order);
  }

  if (result.found) {
    bool fits = !options.capacity || result.peak <= *options.capacity;
    result.status = result.peak <= result.load ? Status::kOptimal
                    : fits                     ? Status::kFeasible
                    : result.load > *options.capacity ? Status::kInfeasible
                                                      : Status::kUnknown;
  }
  result.seconds = deadline.elapsed();
  return result;
}

}  // namespace memo::plan
