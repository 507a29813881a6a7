// The peak device memory of a run split by purpose (docs/chunks.md, "The
// memory report"): weights and optimizer state, whole-sequence tensors, chunk
// buffers and transients. How each part is found:
//   static          the device bytes allocated before the first step (the
//                   memory meter / the device allocator's statistics) less the
//                   policy's rounding buffers, which prepare allocated then;
//   chunk buffers   the policy's rounding buffers (offload, memo; 0 otherwise)
//                   and, beside them, the inputs of the two units in flight
//                   that it restored (2 h c per token of a unit: a chunk's
//                   worth, or a layer's with whole layers);
//   whole sequence  from the shapes, the hidden state across a layer boundary
//                   (x and y, dy and dx) and, with chunked layers, K and V of
//                   a layer and their accumulators (train/chunking.h; K and V
//                   not again under keep, which holds every layer's), plus
//                   what the policy held at its peak beyond its buffers (keep:
//                   every skeletal set, chunked every layer's K and V;
//                   recompute: the layer inputs; offload, memo: what they
//                   held beyond the buffers and the inputs in flight); under
//                   --sp > 1 with chunked layers the head-layout K, V and
//                   dK, dV and the waiting dq and inputs, measured where the
//                   chunk program allocates them (train/layer_program.h's
//                   MeasuredParts; the names are plan/chunk_plan.h's);
//   transients      the rest of the measured peak (one layer's or one chunk's
//                   working set, the loss chunk, allocator rounding).
// The first and the peak are measured; the whole-sequence part is computed
// (but for the parts measured), so the transients are what the measurement
// leaves (clamped at 0).
#pragma once

#include <nlohmann/json.hpp>

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <map>
#include <string>

#include "model/config.h"

namespace memo::train {

struct MemorySplit {
  int64_t static_bytes = 0;
  int64_t whole_sequence_bytes = 0;
  // The whole-sequence parts the runtime measured (by plan/chunk_plan.h's
  // name), as counted in whole_sequence_bytes; empty when none was.
  std::map<std::string, int64_t> measured_parts;
  int64_t chunk_buffer_bytes = 0;
  int64_t transient_bytes = 0;
};

struct MemorySplitInputs {
  int64_t peak_bytes = 0;             // the measured peak of the run (or the row)
  int64_t allocated_before_step = 0;  // measured before the first step
  int64_t buffer_bytes = 0;           // the policy's rounding buffers
  int64_t policy_peak_bytes = 0;      // the most the policy held on the device (buffers included)
  int64_t tokens = 0;                 // batch x seq_len of a micro-batch
  bool chunked = false;               // layers ran over chunks
  // The policy holds every chunked layer's K and V (keep): the layer's K and
  // V are among policy_peak_bytes, not beside them.
  bool policy_holds_layer_kv = false;
  int64_t unit_tokens = 0;  // batch x tokens of a unit (a chunk; the sequence with whole layers)
  int64_t sp = 1;           // sequence parallel degree (tokens: the rank's shard)
  bool kv_on_host = false;  // --kv-on-host: K, V and dK, dV in host blocks, not whole on the device
  // Whole-sequence parts the runtime measured, by name (the most held at
  // once): they replace the parts of that name computed from the shapes.
  std::map<std::string, int64_t> measured_parts;
};

MemorySplit split_peak(const MemorySplitInputs& in, const model::ModelConfig& c, c10::ScalarType compute);

nlohmann::json to_json(const MemorySplit& s);
// "static 1.2 GiB, whole-sequence 300 MiB, chunk buffers 20 MiB, transients 90 MiB".
std::string describe(const MemorySplit& s);

}  // namespace memo::train
