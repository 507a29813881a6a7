// The cost of K and V on the host (`--kv-on-host`, runtime/kv_stream.h,
// docs/chunks.md "K and V on the host") for a layer run in chunks of C
// tokens: the device staging the stream allocates, the host blocks, and the
// bytes over the host link per step. Pure C++ (no torch); the runtime's
// KvStream counts the same link bytes (tests/test_kv_on_host.cpp).
//
// Per layer, with B sequences of S tokens in k = ceil(S / C) chunks, kv =
// 2 nkv d, c compute and s statistics bytes, and T = C k (k - 1) / 2 the
// earlier keys summed over the chunks (the streamed prefix):
//   to host:   B kv (S c + T s)        each chunk's K, V once; dK, dV of
//                                      each earlier block back after its add
//   to device: B kv (2 T c + T s + S s)  the prefix in forward and again in
//                                      backward; dK, dV of each earlier block
//                                      fetched to add; each chunk's own dK,
//                                      dV once
//   recompute adds B kv (S c) to host and B kv (T c) to device (K, V
//   rebuilt into the blocks, and each chunk's attention recomputed); memo
//   adds B kv (S c) to host (K, V rebuilt into the blocks from the chunks'
//   inputs, runtime/kv_rebuild.h; attention is not recomputed).
// Host blocks at the step's peak: keep and offload every layer's K, V and
// one layer's dK, dV, B S kv (n c + s); recompute and memo, which let a
// layer's blocks go after its forward, one layer's, B S kv (c + s).
#pragma once

#include <cstdint>
#include <string>

#include "plan/chunk_plan.h"
#include "plan/cost_model.h"

namespace memo::plan {

// The whole-sequence parts (plan/chunk_plan.cpp) that --kv-on-host moves to
// the host, by name.
inline constexpr const char* kLayerKvPart = whole_part::kLayerKv;
inline constexpr const char* kKvAccumulatorPart = whole_part::kKvAccumulators;
inline constexpr const char* kEveryLayerKvPart = whole_part::kEveryLayerKv;

struct KvOnHostCost {
  double staging_bytes = 0;         // device: B C kv max(2c, c + 2s)
  double host_bytes = 0;            // host blocks at the step's peak
  double link_to_host_bytes = 0;    // per step, every layer
  double link_to_device_bytes = 0;  // per step, every layer
  double link_s = 0;                // those over the host link (h2d, d2h)
  double removed_bytes = 0;         // the whole-sequence parts it moves off the device
  double device_bytes = 0;          // the chunk plan's device bytes with them moved, staging added
  bool fits = false;                // device_bytes and host (the policy's and these) within the hardware's
};

// For `policy` at chunk_tokens >= 1 (below seq_len); in.parallel.sp must be 1.
KvOnHostCost kv_on_host_cost(const PlanInputs& in, const std::string& policy, int64_t chunk_tokens);
// The same against the chunk plan's split of that policy (its chunk): the
// parts moved off the device, and whether the run fits with them moved.
KvOnHostCost kv_on_host_cost(const PlanInputs& in, const ChunkMemory& m);

// `--chunk-tokens auto` with --kv-on-host: the largest multiple of `unit`
// whose chunk plan, K, V and accumulators moved to host blocks and the
// staging added, fits the device (the whole shard when it fits unchunked,
// where K, V stay with the layer); 0 when not even one unit does. The
// device side only (the host's bound is the run's fit check), also for
// memo: the rule auto_chunk_tokens applies to memo on a short host (the
// fewest chunks whose x-only recompute stays within its bound) would weigh the chunk
// plan's device tier and x-only units, which count K, V on the device and
// not their host blocks, so with them moved the tier's room and the host
// would both be wrong. in.parallel.sp must be 1.
int64_t auto_chunk_tokens_kv_on_host(const PlanInputs& in, const std::string& policy, int64_t unit);

}  // namespace memo::plan
