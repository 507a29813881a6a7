// The peak device memory split by purpose.
#include "train/memory_split.h"

#include <algorithm>

#include "core/units.h"
#include "train/chunking.h"

namespace memo::train {

MemorySplit split_peak(const MemorySplitInputs& in, const model::ModelConfig& c, c10::ScalarType compute) {
  MemorySplit s;
  s.chunk_buffer_bytes = in.buffer_bytes;
  s.static_bytes = std::max<int64_t>(0, in.allocated_before_step - in.buffer_bytes);
  int64_t per_token = 0;
  for (const auto& t : whole_sequence_tensors(c, compute))
    if (in.chunked || t.name.rfind("hidden", 0) == 0) per_token += t.bytes_per_token;  // K, V only when chunked
  s.whole_sequence_bytes = per_token * in.tokens + std::max<int64_t>(0, in.policy_peak_bytes - in.buffer_bytes);
  s.transient_bytes =
      std::max<int64_t>(0, in.peak_bytes - s.static_bytes - s.whole_sequence_bytes - s.chunk_buffer_bytes);
  return s;
}

nlohmann::json to_json(const MemorySplit& s) {
  return {{"static_bytes", s.static_bytes},
          {"whole_sequence_bytes", s.whole_sequence_bytes},
          {"chunk_buffer_bytes", s.chunk_buffer_bytes},
          {"transient_bytes", s.transient_bytes}};
}

std::string describe(const MemorySplit& s) {
  auto b = [](int64_t v) { return format_bytes(static_cast<double>(v)); };
  return "weights and optimizer state " + b(s.static_bytes) + ", whole-sequence tensors " +
         b(s.whole_sequence_bytes) + ", chunk buffers " + b(s.chunk_buffer_bytes) + ", transients " +
         b(s.transient_bytes);
}

}  // namespace memo::train
