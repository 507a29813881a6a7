// Naive O(n^2) validator; it shares no code with the solvers on purpose.
#include "plan/dsa_validate.h"

#include <algorithm>

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
  for (size_t i = 0; i < bufs.size(); ++i) {
    if (!placed(i)) continue;
    for (size_t j = i + 1; j < bufs.size(); ++j) {
      if (!placed(j)) continue;
      // Half-open intervals in time [lower, upper) and space [offset, offset + size).
      bool in_time = bufs[i].lower < bufs[j].upper && bufs[j].lower < bufs[i].upper;
      bool in_space = offsets[i] < offsets[j] + bufs[j].size &&
                      offsets[j] < offsets[i] + bufs[i].size;
      if (in_time && in_space)
        report(ViolationKind::kOverlap, i, j,
               cat("buffers '", bufs[i].id, "' and '", bufs[j].id,
                   "' overlap in time and space"));
    }
  }
  return result;
}

}  // namespace memo::plan
