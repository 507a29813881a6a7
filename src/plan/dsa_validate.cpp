// The validator; it shares no code with the solvers on purpose. All pairs up
// to kPairwiseBuffers buffers, a sweep over time above (10^6 buffers would
// take hours pairwise).
#include "plan/dsa_validate.h"

#include <algorithm>
#include <map>
#include <set>
#include <tuple>

#include "core/error.h"

namespace memo::plan {

bool Validation::has(ViolationKind kind) const {
  return std::any_of(violations.begin(), violations.end(),
                     [kind](const Violation& v) { return v.kind == kind; });
}

std::string Validation::summary() const {
  if (ok()) return "ok";
  std::string text = cat(violation_count, " violation(s)");
  for (size_t i = 0; i < violations.size() && i < 5; ++i) text += "; " + violations[i].message;
  return text;
}

Validation validate(const Problem& problem, const Offsets& offsets,
                    std::optional<int64_t> capacity) {
  Validation result;
  const auto& bufs = problem.buffers;
  auto report = [&](ViolationKind kind, size_t a, size_t b, std::string message) {
    ++result.violation_count;
    if (result.violations.size() < kMaxReported)
      result.violations.push_back({kind, a, b, std::move(message)});
  };
  auto placed = [&](size_t i) { return i < offsets.size() && offsets[i] != kNoOffset; };

  for (size_t i = 0; i < bufs.size(); ++i) {
    if (!placed(i)) {
      report(ViolationKind::kMissingOffset, i, i, cat("buffer '", bufs[i].id, "' has no offset"));
      continue;
    }
    int64_t top = offsets[i] + bufs[i].size;
    result.peak = std::max(result.peak, top);
    if (offsets[i] < 0 || offsets[i] % std::max<int64_t>(bufs[i].alignment, 1) != 0)
      report(ViolationKind::kMisaligned, i, i,
             cat("buffer '", bufs[i].id, "' at offset ", offsets[i], " is not a multiple of ",
                 bufs[i].alignment));
    if (capacity && top > *capacity)
      report(ViolationKind::kOverCapacity, i, i,
             cat("buffer '", bufs[i].id, "' ends at ", top, " > capacity ", *capacity));
  }
  auto overlap = [&](size_t i, size_t j) {
    report(ViolationKind::kOverlap, std::min(i, j), std::max(i, j),
           cat("buffers '", bufs[std::min(i, j)].id, "' and '", bufs[std::max(i, j)].id,
               "' overlap in time and space"));
  };
  const bool instants = std::any_of(bufs.begin(), bufs.end(), [](const Buffer& b) { return b.lower >= b.upper; });
  if (bufs.size() <= kPairwiseBuffers || instants) {
    for (size_t i = 0; i < bufs.size(); ++i) {
      if (!placed(i)) continue;
      for (size_t j = i + 1; j < bufs.size(); ++j) {
        if (!placed(j)) continue;
        // Half-open intervals in time [lower, upper) and space [offset, offset + size).
        bool in_time = bufs[i].lower < bufs[j].upper && bufs[j].lower < bufs[i].upper;
        bool in_space = offsets[i] < offsets[j] + bufs[j].size &&
                        offsets[j] < offsets[i] + bufs[i].size;
        if (in_time && in_space) overlap(i, j);
      }
    }
    return result;
  }
  // Sweep: the buffers alive at each time, by offset. Two intervals share a
  // byte exactly as above (a zero-size buffer at o lies inside [a, b) when
  // a < o < b). The live set stays disjoint (a buffer that overlaps is
  // reported and left out), so a new buffer needs checking only against its
  // neighbours by offset; every packing with an overlap is caught, and the
  // count is then a lower bound on the overlapping pairs.
  std::vector<std::tuple<int64_t, int, size_t>> events;  // (time, 0 = free / 1 = alive, buffer)
  for (size_t i = 0; i < bufs.size(); ++i) {
    if (!placed(i)) continue;
    events.emplace_back(bufs[i].lower, 1, i);
    events.emplace_back(bufs[i].upper, 0, i);
  }
  std::sort(events.begin(), events.end());
  std::map<int64_t, std::pair<int64_t, size_t>> live;  // offset -> (end, buffer), sizes > 0
  std::multimap<int64_t, size_t> points;                // offset -> buffer, sizes == 0
  std::vector<bool> inserted(bufs.size(), false);
  for (const auto& [time, alive, i] : events) {
    const int64_t o = offsets[i], e = offsets[i] + bufs[i].size;
    if (!alive) {
      if (!inserted[i]) continue;
      if (bufs[i].size > 0) {
        live.erase(o);
      } else {
        auto [a, b] = points.equal_range(o);
        for (auto it = a; it != b; ++it)
          if (it->second == i) {
            points.erase(it);
            break;
          }
      }
      continue;
    }
    auto after = live.upper_bound(o);  // first block starting above o
    if (after != live.begin() && std::prev(after)->second.first > o && std::prev(after)->first < o) {
      overlap(i, std::prev(after)->second.second);  // o lies strictly inside a live block
      continue;
    }
    if (bufs[i].size == 0) {
      points.emplace(o, i);
      inserted[i] = true;
      continue;
    }
    auto same = live.find(o);
    if (same != live.end()) {
      overlap(i, same->second.second);
      continue;
    }
    if (after != live.end() && after->first < e) {
      overlap(i, after->second.second);
      continue;
    }
    auto inside = points.upper_bound(o);  // a zero-size buffer strictly inside [o, e)
    if (inside != points.end() && inside->first < e) {
      overlap(i, inside->second);
      continue;
    }
    live.emplace(o, std::make_pair(e, i));
    inserted[i] = true;
  }
  return result;
}

}  // namespace memo::plan
