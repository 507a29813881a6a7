// Peak anchors: starting points for the skyline greedy that fix, before
// anything else, the buffers alive at the time of maximum load.
//
// At that time any stacking of the live buffers is perfect (their sizes sum
// to LOAD), so the greedy can only lose there by the order it builds them in.
// When the load elsewhere is lower, it pays to give them consecutive offsets
// first and pack the rest around them. Which stacking order lets the rest fit
// depends on both sides of the peak: ordered by end time (latest at the
// bottom), the stack shrinks from the top after the peak and leaves no holes
// there; ordered by start time (earliest at the bottom) the same holds
// before it. Both are offered, plus lifetime length as a compromise.
#include <algorithm>

#include "plan/dsa_internal.h"

namespace memo::plan::detail {

std::vector<Offsets> peak_anchors(const Problem& problem, const Sections& sections) {
  const auto& bufs = problem.buffers;
  const int n = static_cast<int>(bufs.size());
  if (n == 0) return {};

  // The first section of maximum load.
  std::vector<int64_t> delta(sections.count() + 1, 0);
  for (int b = 0; b < n; ++b) {
    delta[sections.first[b]] += bufs[b].size;
    delta[sections.last[b]] -= bufs[b].size;
  }
  int peak_section = 0;
  int64_t live = 0, most = -1;
  for (int s = 0; s < sections.count(); ++s) {
    live += delta[s];
    if (live > most) {
      most = live;
      peak_section = s;
    }
  }
  std::vector<int> alive;
  for (int b = 0; b < n; ++b)
    if (sections.first[b] <= peak_section && peak_section < sections.last[b]) alive.push_back(b);

  auto length = [&](int b) { return bufs[b].upper - bufs[b].lower; };
  auto stack = [&](auto below) {
    std::vector<int> order = alive;
    std::stable_sort(order.begin(), order.end(), below);
    Offsets fixed(bufs.size(), kNoOffset);
    int64_t offset = 0;
    for (int b : order) {
      fixed[b] = align_up(offset, bufs[b].alignment);
      offset = fixed[b] + bufs[b].size;
    }
    return fixed;
  };
  std::vector<Offsets> anchors;
  anchors.push_back(stack([&](int a, int b) {
    return std::pair(bufs[a].upper, -bufs[a].lower) > std::pair(bufs[b].upper, -bufs[b].lower);
  }));
  anchors.push_back(stack([&](int a, int b) {
    return std::pair(bufs[a].lower, -bufs[a].upper) < std::pair(bufs[b].lower, -bufs[b].upper);
  }));
  anchors.push_back(stack([&](int a, int b) { return length(a) > length(b); }));
  return anchors;
}

}  // namespace memo::plan::detail
