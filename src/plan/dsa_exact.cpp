// Exact solver: depth-first branch and bound over canonical packings.
//
// Canonical form: push every buffer down as far as it goes; then each buffer
// sits at offset 0 or on top of a buffer alive with it. The search keeps a
// skyline (per time section, the height below which everything is decided:
// placed, or known to stay empty) and fills a stretch that is a local minimum
// of it (the leftmost one), at its height h:
//   * children "place b at h", for each unplaced b whose lifetime lies inside
//     the stretch (one at h reaching outside would cut into the decided space
//     of the higher neighbours); b is the leftmost buffer at h there, so
//     sections of the stretch left of b are closed at h and raised to their
//     lower neighbour;
//   * a last child "nothing at h here": the stretch is raised to its lower
//     neighbour.
// Every canonical packing is reached exactly once, so no optimum is missed.
// Also: identical buffers are placed in index order (symmetry), buffers that
// share no time with the rest are solved as independent subproblems, and
// failed states (skyline + placed set) are remembered.
// Pruning, against `cap` (the capacity, or the peak a run aims below):
//   * every unplaced buffer must still fit: landing + size <= cap;
//   * per time section s: (lowest offset any unplaced buffer alive in s can
//     still land at) + (bytes still to place in s) <= cap. This is LOAD with
//     the wasted space counted, what makes perfect packings tractable.
// Search time is heavy-tailed in the branching order, so two threads run
// restarts over orders with doubling node budgets (search_worker).
#include <algorithm>
#include <atomic>
#include <limits>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <thread>
#include <tuple>
#include <unordered_set>
#include <utility>

#include "plan/dsa_internal.h"
#include "plan/dsa_solver.h"

namespace memo::plan {
namespace {

constexpr int64_t kInf = std::numeric_limits<int64_t>::max() / 4;

struct LimitReached {};

class Search {
 public:
  Search(const Problem& problem, const std::vector<int>& order, bool mirror, bool prefer_fit,
         int64_t node_limit, const detail::Deadline& deadline, const std::atomic<bool>& stop)
      : n_(static_cast<int>(order.size())),
        prefer_fit_(prefer_fit),
        node_limit_(node_limit),
        deadline_(deadline),
        stop_(stop) {
    detail::Sections sections = detail::make_sections(problem);
    // Internal index i = priority rank: lower index is tried first.
    for (int b : order) {
      const Buffer& buf = problem.buffers[b];
      original_.push_back(b);
      size_.push_back(buf.size);
      align_.push_back(buf.alignment);
      // Mirrored, time runs backwards: the same packings, another search.
      first_.push_back(mirror ? sections.count() - sections.last[b] : sections.first[b]);
      last_.push_back(mirror ? sections.count() - sections.first[b] : sections.last[b]);
    }
    sections_ = sections.count();
    log2_.assign(sections_ + 1, 0);
    for (int len = 2; len <= sections_; ++len) log2_[len] = log2_[len / 2] + 1;
    high_.assign(log2_[sections_] + 1, std::vector<int64_t>(sections_));
    low_ = high_;
    // Identical buffers are interchangeable: only the first unplaced one of a
    // group may be placed next (symmetry breaking).
    twin_before_.assign(n_, -1);
    std::map<std::tuple<int, int, int64_t, int64_t>, int> seen;
    for (int i = 0; i < n_; ++i) {
      auto [it, fresh] = seen.try_emplace({first_[i], last_[i], size_[i], align_[i]}, i);
      if (!fresh) twin_before_[i] = std::exchange(it->second, i);
    }
  }

  // Is there a packing with peak <= cap? If so it is left in packing().
  // Throws LimitReached when the node or time limit runs out.
  bool feasible(int64_t cap) {
    cap_ = cap;
    sky_.assign(sections_, 0);
    remaining_.assign(sections_, 0);
    offset_.assign(n_, kNoOffset);
    undo_.clear();
    placed_.clear();
    failed_.clear();
    placed_key_ = {0, 0};
    sky_key_ = {0, 0};  // (relative to the all-zero skyline)
    for (int i = 0; i < n_; ++i)
      for (int s = first_[i]; s < last_[i]; ++s) remaining_[s] += size_[i];
    std::vector<int> all(n_);
    std::iota(all.begin(), all.end(), 0);
    std::stable_sort(all.begin(), all.end(), [&](int a, int b) { return first_[a] < first_[b]; });
    return solve(all);
  }

  Offsets packing() const {
    Offsets result(n_);
    for (int i = 0; i < n_; ++i) result[original_[i]] = offset_[i];
    return result;
  }
  int64_t peak() const {
    int64_t top = 0;
    for (int i = 0; i < n_; ++i) top = std::max(top, offset_[i] + size_[i]);
    return top;
  }
  int64_t nodes() const { return nodes_; }

 private:
  // Places every buffer of `set` (unplaced, sorted by first section) or
  // returns false with the state unchanged.
  // Memoizes failures: the rest of the search depends only on the skyline
  // and on which buffers are placed (not where), and many orders lead to the
  // same state (e.g. a stack of buffers in different orders).
  bool solve(const std::vector<int>& set) {
    if (set.empty()) return true;
    Key key = state_key(set);
    if (failed_.count(key)) return false;
    if (solve_node(set)) return true;
    if (failed_.size() < kMaxMemo) failed_.insert(key);
    return false;
  }

  bool solve_node(const std::vector<int>& set) {
    if (++nodes_ % 1024 == 0 && (deadline_.passed() || stop_)) throw LimitReached{};
    if (node_limit_ > 0 && nodes_ > node_limit_) throw LimitReached{};

    // Buffers that share no time with the rest form independent subproblems
    // (given the skyline so far): solve them one by one, and if one has no
    // packing, neither has this node, whatever the others did.
    std::vector<std::vector<int>> parts;
    int reach = -1;
    for (int i : set) {
      if (first_[i] >= reach) parts.emplace_back();
      parts.back().push_back(i);
      reach = std::max(reach, last_[i]);
    }
    if (parts.size() > 1) {
      Mark mark = here();
      for (const auto& part : parts)
        if (!solve(part)) {
          rollback(mark);
          return false;
        }
      return true;
    }
    int lo = first_[set.front()], hi = reach;

    // The stretch filled next is the leftmost local minimum of the skyline
    // (a maximal run of equal height whose neighbours are higher): skip runs
    // that descend to their right. Working left to right keeps the decisions
    // that a failure depends on close together in the search.
    int start = lo, end;
    while (true) {
      for (end = start; end < hi && sky_[end] == sky_[start];) ++end;
      if (end == hi || sky_[end] > sky_[start]) break;
      start = end;
    }
    int64_t height = sky_[start];

    // Bounds, and the candidates: buffers whose lifetime lies in the stretch.
    // (Range max and range min-update go through sparse tables, so a node
    // costs O(sections log sections + buffers) rather than the sum of spans.)
    build_range_max(lo, hi);
    int levels = log2_[hi - lo];
    for (int k = 0; k <= levels; ++k) std::fill(low_[k].begin() + lo, low_[k].begin() + hi, kInf);
    std::vector<int> candidates;
    for (int i : set) {
      int64_t landing = align_up(range_max(first_[i], last_[i]), align_[i]);  // lowest offset left
      if (landing + size_[i] > cap_) return false;  // it can never be placed
      int k = log2_[last_[i] - first_[i]];
      low_[k][first_[i]] = std::min(low_[k][first_[i]], landing);
      low_[k][last_[i] - (1 << k)] = std::min(low_[k][last_[i] - (1 << k)], landing);
      bool twin_waits = twin_before_[i] >= 0 && offset_[twin_before_[i]] == kNoOffset;
      if (first_[i] >= start && last_[i] <= end && !twin_waits) candidates.push_back(i);
    }
    for (int k = levels; k > 0; --k)
      for (int s = lo, half = 1 << (k - 1); s + (1 << k) <= hi; ++s) {
        low_[k - 1][s] = std::min(low_[k - 1][s], low_[k][s]);
        low_[k - 1][s + half] = std::min(low_[k - 1][s + half], low_[k][s]);
      }
    // low_[0][s]: the lowest offset any unplaced buffer alive in s can take.
    for (int s = lo; s < hi; ++s)
      if (remaining_[s] > 0 && low_[0][s] + remaining_[s] > cap_) return false;
    // Candidates starting at the stretch's left end waste nothing: try them first.
    std::sort(candidates.begin(), candidates.end(), [&](int a, int b) {
      return std::tuple(first_[a] > start, prefer_fit_ && last_[a] != end, a) <
             std::tuple(first_[b] > start, prefer_fit_ && last_[b] != end, b);
    });

    // Children: candidate i is the leftmost buffer at this height in the
    // stretch (so the sections left of it are closed at this height) ...
    std::vector<int> rest;
    for (int i : candidates) {
      Mark mark = here();
      place(i, align_up(height, align_[i]));
      if (start < first_[i]) fill_up(start, first_[i], lo, hi);
      rest.clear();
      for (int j : set)
        if (j != i) rest.push_back(j);
      if (solve(rest)) return true;
      rollback(mark);
    }
    // ... or nothing at all is placed at this height in the stretch.
    if (start > lo || end < hi) {
      Mark mark = here();
      fill_up(start, end, lo, hi);
      if (solve(set)) return true;
      rollback(mark);
    }
    return false;
  }

  void build_range_max(int lo, int hi) {
    std::copy(sky_.begin() + lo, sky_.begin() + hi, high_[0].begin() + lo);
    for (int k = 1; (1 << k) <= hi - lo; ++k)
      for (int s = lo; s + (1 << k) <= hi; ++s)
        high_[k][s] = std::max(high_[k - 1][s], high_[k - 1][s + (1 << (k - 1))]);
  }
  int64_t range_max(int a, int b) const {
    int k = log2_[b - a];
    return std::max(high_[k][a], high_[k][b - (1 << k)]);
  }

  struct Mark {
    size_t undo, placed;
  };
  Mark here() const { return {undo_.size(), placed_.size()}; }

  void set_sky(int s, int64_t height) {
    undo_.push_back({s, sky_[s]});
    rehash_sky(s, sky_[s], height);
    sky_[s] = height;
  }

  // 128-bit state keys: Zobrist-style XORs of the skyline, the placed
  // buffers and the subproblem's buffers.
  using Key = std::pair<uint64_t, uint64_t>;
  struct KeyHash {
    size_t operator()(const Key& k) const { return k.first; }
  };
  static uint64_t mix(uint64_t x) {  // splitmix64 finalizer
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
  }
  static Key sky_term(int s, int64_t height) {
    uint64_t x = mix(static_cast<uint64_t>(height) * 0x100000001b3ull + static_cast<uint64_t>(s));
    return {x, mix(x ^ 0x5851f42d4c957f2dull)};
  }
  void rehash_sky(int s, int64_t old_height, int64_t new_height) {
    Key a = sky_term(s, old_height), b = sky_term(s, new_height);
    sky_key_.first ^= a.first ^ b.first;
    sky_key_.second ^= a.second ^ b.second;
  }
  Key buffer_term(int i, uint64_t salt) const {
    uint64_t x = mix(static_cast<uint64_t>(i) ^ salt);
    return {x, mix(x ^ 0x2545f4914f6cdd1dull)};
  }
  void toggle_placed(int i) {
    Key t = buffer_term(i, 0x1234567);
    placed_key_.first ^= t.first;
    placed_key_.second ^= t.second;
  }
  Key state_key(const std::vector<int>& set) const {
    Key key{sky_key_.first ^ placed_key_.first, sky_key_.second ^ placed_key_.second};
    for (int i : set) {
      Key t = buffer_term(i, 0x7654321);
      key.first ^= t.first;
      key.second ^= t.second;
    }
    return key;
  }

  void place(int i, int64_t offset) {
    offset_[i] = offset;
    toggle_placed(i);
    placed_.push_back(i);
    for (int s = first_[i]; s < last_[i]; ++s) {
      set_sky(s, offset + size_[i]);
      remaining_[s] -= size_[i];
    }
  }

  // Raises sections [start, end) (all at one height) to the lower of the
  // heights just outside them, within the subproblem's sections [lo, hi).
  void fill_up(int start, int end, int lo, int hi) {
    int64_t target = kInf;
    if (start > lo) target = sky_[start - 1];
    if (end < hi) target = std::min(target, sky_[end]);
    for (int s = start; s < end; ++s) set_sky(s, target);
  }

  void rollback(Mark mark) {
    while (placed_.size() > mark.placed) {
      int i = placed_.back();
      placed_.pop_back();
      for (int s = first_[i]; s < last_[i]; ++s) remaining_[s] += size_[i];
      offset_[i] = kNoOffset;
      toggle_placed(i);
    }
    while (undo_.size() > mark.undo) {
      rehash_sky(undo_.back().first, sky_[undo_.back().first], undo_.back().second);
      sky_[undo_.back().first] = undo_.back().second;
      undo_.pop_back();
    }
  }

  int n_;
  int sections_ = 0;
  bool prefer_fit_;  // among left-aligned candidates, try exact fits first
  int64_t node_limit_;
  const detail::Deadline& deadline_;
  const std::atomic<bool>& stop_;  // another worker finished
  std::vector<int> original_, first_, last_, twin_before_;
  std::vector<int64_t> size_, align_, offset_;
  std::vector<int64_t> sky_, remaining_;
  std::vector<int> log2_;                    // floor(log2(len))
  std::vector<std::vector<int64_t>> high_;  // sparse table: max of sky_ over 2^k sections
  std::vector<std::vector<int64_t>> low_;   // min-updates over 2^k sections, pushed down
  std::vector<std::pair<int, int64_t>> undo_;
  std::vector<int> placed_;
  Key sky_key_{0, 0}, placed_key_{0, 0};
  std::unordered_set<Key, KeyHash> failed_;  // states known to have no packing
  static constexpr size_t kMaxMemo = size_t{1} << 20;  // about 64 MB
  int64_t cap_ = 0;
  int64_t nodes_ = 0;
};

// Branching priorities: a few fixed orders, then random perturbations of them
// (the search time is heavy-tailed in the order, hence restarts).
std::vector<int> search_order(const Problem& problem, int round, std::mt19937_64& rng) {
  const auto& bufs = problem.buffers;
  std::vector<int> order(bufs.size());
  std::iota(order.begin(), order.end(), 0);
  auto length = [&](int a) { return bufs[a].upper - bufs[a].lower; };
  auto area = [&](int a) { return static_cast<double>(bufs[a].size) * length(a); };
  std::vector<double> noise(bufs.size(), 1.0);
  if (round >= 4) {  // (rounds 0-3 are the plain orders)
    std::uniform_real_distribution<double> jitter(0.7, 1.3);
    for (double& v : noise) v = jitter(rng);
  }
  auto key = [&](int a) -> std::pair<double, double> {
    switch (round % 4) {
      case 0: return {length(a) * noise[a], static_cast<double>(bufs[a].size)};
      case 1: return {bufs[a].size * noise[a], static_cast<double>(length(a))};
      case 2: return {area(a) * noise[a], 0.0};
      default: return {length(a) * noise[a], area(a)};
    }
  };
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return key(a) > key(b); });
  return order;
}

}  // namespace

namespace {

// What the two search workers share.
struct Shared {
  std::mutex mutex;
  std::atomic<bool> done{false};  // answered, proven, or out of nodes
  std::atomic<int64_t> nodes{0};
  bool found = false;
  bool proven = false;  // optimal (no capacity) or infeasible (capacity) proven
  Offsets offsets;
  int64_t peak = kInf;   // best found (an upper bound)
  int64_t lower = 0;     // proven: no packing has a smaller peak
};

// Runs searches until done. Search time is heavy-tailed in the branching
// order, so each worker restarts: round r uses order r / 2 (four fixed
// orders, then random perturbations) and candidate rule r % 2, with a node
// budget that doubles every kConfigs rounds. Worker 1 searches the
// time-mirrored problem (the same packings, explored in another order). A
// search that ends within its budget is a proof either way.
void search_worker(const Problem& problem, const SolveOptions& options,
                   const detail::Deadline& deadline, Shared& shared, int worker) {
  constexpr int kConfigs = 8;
  std::mt19937_64 rng(options.seed + static_cast<uint64_t>(worker));
  for (int round = 0; !shared.done && !deadline.passed(); ++round) {
    std::vector<int> order = search_order(problem, round / 2, rng);
    // With a capacity there is one target. Without, each round tries three,
    // each with the round's budget: the proven lower bound (LOAD at first:
    // often reachable, and pruning is strongest there), the midpoint between
    // it and the best peak, and just below the best peak (repeatedly).
    for (int target = 0; target < (options.capacity ? 1 : 3) && !shared.done; ++target) {
      int64_t budget = int64_t{4096} << std::min(round / kConfigs, 40);
      if (options.node_limit > 0) {
        int64_t left = options.node_limit - shared.nodes.load();
        if (left <= 0) return;
        budget = std::min(budget, left);
      }
      Search search(problem, order, worker == 1, round % 2 == 1, budget, deadline, shared.done);
      try {
        while (!shared.done) {
          int64_t cap;
          {
            std::lock_guard lock(shared.mutex);
            if (options.capacity)
              cap = *options.capacity;
            else if (target == 0 || shared.peak == kInf)
              cap = shared.lower;
            else if (target == 1)
              cap = shared.lower + (shared.peak - 1 - shared.lower) / 2;
            else
              cap = shared.peak - 1;
          }
          bool fits = search.feasible(cap);
          std::lock_guard lock(shared.mutex);
          if (!fits) {  // proven: nothing fits within cap
            shared.lower = std::max(shared.lower, cap + 1);
            if (options.capacity || shared.lower >= shared.peak) {
              shared.proven = true;
              shared.done = true;
            }
            break;
          }
          if (!shared.found || search.peak() < shared.peak) {
            shared.found = true;
            shared.offsets = search.packing();
            shared.peak = search.peak();
          }
          if (options.capacity || shared.peak <= shared.lower) shared.done = true;
          if (target != 2) break;  // only the descent goes on
        }
      } catch (const LimitReached&) {
      }
      shared.nodes += search.nodes();
    }
  }
}

}  // namespace

namespace detail {

SolveResult exact_search(const Problem& problem, const SolveOptions& options,
                         const SolveResult* incumbent) {
  Deadline deadline(options.time_limit_s);
  SolveResult result;
  result.load = load(problem);
  Shared shared;
  shared.lower = result.load;
  if (incumbent && incumbent->found) {
    shared.found = true;
    shared.offsets = incumbent->offsets;
    shared.peak = incumbent->peak;
  }
  // The search recurses once per placement; beyond this size it would need
  // too deep a stack (and costs O(n) per node anyway), so it is not run.
  if (problem.buffers.size() <= kMaxExactBuffers) {
    std::thread helper(search_worker, std::cref(problem), std::cref(options),
                       std::cref(deadline), std::ref(shared), 1);
    search_worker(problem, options, deadline, shared, 0);
    shared.done = true;
    helper.join();
  }
  result.found = shared.found;
  result.offsets = std::move(shared.offsets);
  result.peak = result.found ? shared.peak : 0;
  const auto& capacity = options.capacity;
  bool fits = result.found && (!capacity || result.peak <= *capacity);
  if (fits && (result.peak <= result.load || (shared.proven && !capacity)))
    result.status = Status::kOptimal;
  else if (fits)
    result.status = capacity ? Status::kFeasible : Status::kTimeout;
  else
    result.status = shared.proven ? Status::kInfeasible : Status::kTimeout;
  result.nodes = shared.nodes;
  result.seconds = deadline.elapsed();
  return result;
}

}  // namespace detail

SolveResult solve_exact(const Problem& problem, const SolveOptions& options) {
  // Beyond kMaxExactBuffers the search does not run (see exact_search); say
  // what best-fit can, rather than nothing.
  if (problem.buffers.size() > detail::kMaxExactBuffers) return solve_bestfit(problem, options);
  if (options.capacity) return detail::exact_search(problem, options, nullptr);
  // Minimising: start from best-fit's fixed orders (no randomized rounds), so
  // that a packing is at hand whenever the time runs out.
  detail::Deadline deadline(options.time_limit_s);
  SolveOptions quick = options;
  quick.time_limit_s = 0;
  SolveResult fit = solve_bestfit(problem, quick);
  SolveOptions rest = options;
  rest.time_limit_s = std::max(0.0, deadline.left());
  SolveResult result = detail::exact_search(problem, rest, &fit);
  result.seconds = deadline.elapsed();
  return result;
}

}  // namespace memo::plan
