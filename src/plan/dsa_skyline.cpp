// The lowest-gap ("skyline") greedy shared by the solvers, and the time
// compression it works on. The greedy may be given pre-placed buffers
// ("obstacles") that it never moves and packs the others around.
//
// Each run is O(n log n) plus the scans of the buffers that start in the
// stretch being filled, fast enough for ~30k buffers; obstacles add a scan of
// the obstacles above the stretch per step.
#include <algorithm>
#include <map>
#include <set>

#include "plan/dsa_internal.h"

namespace memo::plan::detail {

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
  explicit Skyline(int sections) : sections_(sections) { set(0, sections, 0); }

  std::pair<int, Stretch> lowest() const {
    int start = by_height_.begin()->second;
    return {start, stretches_.at(start)};
  }

  // The lower of the heights either side of the stretch at `at` (INT64_MAX
  // if it spans every section).
  int64_t neighbour_height(int at) const {
    auto it = stretches_.find(at);
    int64_t target = INT64_MAX;
    if (it != stretches_.begin()) target = std::prev(it)->second.height;
    if (std::next(it) != stretches_.end()) target = std::min(target, std::next(it)->second.height);
    return target;
  }

  // Sets sections [start, end) to `height`, whatever they were.
  void assign(int start, int end, int64_t height) {
    split(start);
    split(end);
    for (auto it = stretches_.find(start); it != stretches_.end() && it->first < end;) {
      by_height_.erase({it->second.height, it->first});
      it = stretches_.erase(it);
    }
    set(start, end, height);
    merge(start);
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
  // Makes `at` the first section of a stretch (unless it is past the end).
  void split(int at) {
    if (at >= sections_) return;
    auto it = std::prev(stretches_.upper_bound(at));
    if (it->first == at) return;
    auto [start, old] = *it;
    erase(start);
    set(start, at, old.height);
    set(at, old.end, old.height);
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

  int sections_;
  std::map<int, Stretch> stretches_;
  std::set<std::pair<int64_t, int>> by_height_;
};

// The pre-placed buffers as blocks [bottom, top) x sections [first, last),
// sorted by bottom.
class Obstacles {
 public:
  struct Block {
    int64_t bottom, top;
    int first, last;
  };
  Obstacles(const Problem& problem, const Sections& sections, const Offsets* fixed) {
    if (fixed == nullptr) return;
    for (size_t b = 0; b < problem.buffers.size(); ++b)
      if ((*fixed)[b] != kNoOffset)
        blocks_.push_back({(*fixed)[b], (*fixed)[b] + problem.buffers[b].size, sections.first[b],
                           sections.last[b]});
    std::sort(blocks_.begin(), blocks_.end(),
              [](const Block& x, const Block& y) { return x.bottom < y.bottom; });
    for (const Block& block : blocks_)
      max_top_.push_back(std::max(max_top_.empty() ? INT64_MIN : max_top_.back(), block.top));
  }

  // The lowest bottom above `height` of a block alive in some section of
  // [first, last): no buffer placed at `height` there may end above it.
  // (A zero-size block counts too: the validator rejects a buffer around it.)
  int64_t ceiling(int first, int last, int64_t height) const {
    auto it = std::upper_bound(blocks_.begin(), blocks_.end(), height,
                               [](int64_t h, const Block& block) { return h < block.bottom; });
    for (; it != blocks_.end(); ++it)
      if (it->first < last && first < it->last) return it->bottom;
    return INT64_MAX;
  }

  // A block alive in some section of [first, last) with bottom <= height < top.
  const Block* covering(int first, int last, int64_t height) const {
    auto end = std::upper_bound(blocks_.begin(), blocks_.end(), height,
                                [](int64_t h, const Block& block) { return h < block.bottom; });
    // Scan down from the highest bottom; the running max of tops says when no
    // block further down can reach above `height`.
    for (auto k = end - blocks_.begin() - 1; k >= 0 && max_top_[k] > height; --k) {
      const Block& block = blocks_[k];
      if (block.top > height && block.first < last && first < block.last) return &block;
    }
    return nullptr;
  }

 private:
  std::vector<Block> blocks_;
  std::vector<int64_t> max_top_;  // max_top_[k]: the highest top among blocks_[0..k]
};

// Lifts the sections of [first, last), all at `height`, that lie inside a
// block to its top (again and again for stacked blocks), so that the skyline
// never rests inside a pre-placed buffer.
void settle(Skyline& skyline, const Obstacles& obstacles, int first, int last, int64_t height) {
  if (first >= last) return;
  const Obstacles::Block* block = obstacles.covering(first, last, height);
  if (block == nullptr) return;
  int a = std::max(first, block->first), b = std::min(last, block->last);
  int64_t top = block->top;
  skyline.assign(a, b, top);
  settle(skyline, obstacles, first, a, height);
  settle(skyline, obstacles, b, last, height);
  settle(skyline, obstacles, a, b, top);
}

}  // namespace

Offsets skyline_fit(const Problem& problem, const Sections& sections,
                    const std::vector<int>& rank, const Offsets* fixed, const Deadline* deadline) {
  const auto& bufs = problem.buffers;
  const int n = static_cast<int>(bufs.size());
  Offsets offsets(bufs.size(), kNoOffset);
  if (n == 0) return offsets;
  auto is_fixed = [&](int b) { return fixed != nullptr && (*fixed)[b] != kNoOffset; };

  // Unplaced buffers by first section; `nonempty` skips empty lists quickly.
  std::vector<std::vector<int>> starting(sections.count());
  int free_count = 0;
  for (int b = 0; b < n; ++b) {
    if (is_fixed(b)) {
      offsets[b] = (*fixed)[b];
    } else {
      starting[sections.first[b]].push_back(b);
      ++free_count;
    }
  }
  std::set<int> nonempty;
  for (int s = 0; s < sections.count(); ++s)
    if (!starting[s].empty()) nonempty.insert(s);

  Obstacles obstacles(problem, sections, fixed);
  Skyline skyline(sections.count());
  settle(skyline, obstacles, 0, sections.count(), 0);
  for (int placed = 0, steps = 0; placed < free_count; ++steps) {
    if (deadline != nullptr && steps % 16 == 15 && deadline->passed()) return {};
    auto [start, stretch] = skyline.lowest();
    // Buffers must end below the pre-placed ones above the stretch: below
    // `roof` (the lowest over the whole stretch) they surely do; above it
    // only their own sections are checked.
    int64_t roof = obstacles.ceiling(start, stretch.end, stretch.height);
    int best = -1;
    for (auto it = nonempty.lower_bound(start); it != nonempty.end() && *it < stretch.end; ++it)
      for (int b : starting[*it]) {
        if (sections.last[b] > stretch.end || (best >= 0 && rank[b] >= rank[best])) continue;
        int64_t top = align_up(stretch.height, bufs[b].alignment) + bufs[b].size;
        if (top > roof &&
            top > obstacles.ceiling(sections.first[b], sections.last[b], stretch.height))
          continue;
        best = b;
      }
    if (best < 0) {
      // Nothing fits: the stretch's space up to the nearest neighbour or
      // pre-placed buffer above is wasted.
      int64_t target = std::min(skyline.neighbour_height(start), roof);
      skyline.assign(start, stretch.end, target);
      settle(skyline, obstacles, start, stretch.end, target);
      continue;
    }
    int64_t offset = align_up(stretch.height, bufs[best].alignment);
    offsets[best] = offset;
    ++placed;
    auto& list = starting[sections.first[best]];
    list.erase(std::find(list.begin(), list.end(), best));
    if (list.empty()) nonempty.erase(sections.first[best]);
    skyline.assign(sections.first[best], sections.last[best], offset + bufs[best].size);
    settle(skyline, obstacles, sections.first[best], sections.last[best], offset + bufs[best].size);
  }
  return offsets;
}

}  // namespace memo::plan::detail
