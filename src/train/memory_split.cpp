// The peak device memory split by purpose.
#include "train/memory_split.h"

#include <algorithm>

#include <c10/core/ScalarType.h>

#include "core/units.h"
#include "plan/chunk_plan.h"
#include "train/chunking.h"

namespace memo::train {

MemorySplit split_peak(const MemorySplitInputs& in, const model::ModelConfig& c, c10::ScalarType compute) {
  MemorySplit s;
  // What the policy held beyond its buffers; with buffers (offload, memo) the
  // inputs of the two units in flight first: chunk-sized, beside the buffers.
  const int64_t held = std::max<int64_t>(0, in.policy_peak_bytes - in.buffer_bytes);
  const int64_t in_flight =
      in.buffer_bytes > 0
          ? std::min<int64_t>(held, 2 * c.hidden * static_cast<int64_t>(c10::elementSize(compute)) * in.unit_tokens)
          : 0;
  s.chunk_buffer_bytes = in.buffer_bytes + in_flight;
  s.static_bytes = std::max<int64_t>(0, in.allocated_before_step - in.buffer_bytes);
  int64_t whole = 0;
  for (const auto& t : whole_sequence_tensors(c, compute, in.sp, in.chunked, in.kv_on_host)) {
    if (in.policy_holds_layer_kv && t.name == plan::whole_part::kLayerKv) continue;  // counted in the policy's
    const auto measured = in.measured_parts.find(t.name);
    if (measured == in.measured_parts.end()) {
      whole += t.bytes_per_token * in.tokens;
    } else {
      whole += measured->second;
      s.measured_parts.insert(*measured);
    }
  }
  s.whole_sequence_bytes = whole + held - in_flight;
  s.transient_bytes =
      std::max<int64_t>(0, in.peak_bytes - s.static_bytes - s.whole_sequence_bytes - s.chunk_buffer_bytes);
  return s;
}

nlohmann::json to_json(const MemorySplit& s) {
  return {{"static_bytes", s.static_bytes},
          {"whole_sequence_bytes", s.whole_sequence_bytes},
          {"chunk_buffer_bytes", s.chunk_buffer_bytes},
          {"transient_bytes", s.transient_bytes},
          {"measured_whole_sequence", s.measured_parts}};
}

std::string describe(const MemorySplit& s) {
  auto b = [](int64_t v) { return format_bytes(static_cast<double>(v)); };
  return "weights and optimizer state " + b(s.static_bytes) + ", whole-sequence tensors " +
         b(s.whole_sequence_bytes) + ", chunk buffers " + b(s.chunk_buffer_bytes) + ", transients " +
         b(s.transient_bytes);
}

}  // namespace memo::train
