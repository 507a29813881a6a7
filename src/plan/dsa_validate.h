// The oracle for every DSA solver: a deliberately simple check that a solution
// places every buffer, respects alignments, never lets two buffers that are
// alive at the same time share a byte, and stays within a capacity. All pairs
// up to kPairwiseBuffers buffers (every overlapping pair is counted); above,
// an O(n log n) sweep over time that catches every packing with an overlap
// (violation_count is then a lower bound on the overlapping pairs).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "plan/dsa_problem.h"

namespace memo::plan {

enum class ViolationKind { kMissingOffset, kMisaligned, kOverlap, kOverCapacity };

struct Violation {
  ViolationKind kind;
  size_t first = 0;   // buffer index
  size_t second = 0;  // the other buffer of an overlap (else == first)
  std::string message;
};

struct Validation {
  std::vector<Violation> violations;  // the first kMaxReported found
  size_t violation_count = 0;         // all found
  int64_t peak = 0;                   // max offset + size over placed buffers
  bool ok() const { return violation_count == 0; }
  bool has(ViolationKind kind) const;
  std::string summary() const;  // "ok" or the first few messages
};

inline constexpr size_t kMaxReported = 20;
inline constexpr size_t kPairwiseBuffers = 4096;

Validation validate(const Problem& problem, const Offsets& offsets,
                    std::optional<int64_t> capacity = std::nullopt);

}  // namespace memo::plan
