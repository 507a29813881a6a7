// K and V on the host: staging, host blocks and link bytes from the shapes
// (plan/kv_on_host_plan.h has the formulas).
#include "plan/kv_on_host_plan.h"

#include <algorithm>

#include "core/error.h"

namespace memo::plan {

KvOnHostCost kv_on_host_cost(const PlanInputs& in, const std::string& policy, int64_t chunk_tokens) {
  require_input(chunk_tokens >= 1, "--kv-on-host needs --chunk-tokens of at least 1, got ", chunk_tokens);
  require_input(in.parallel.sp == 1, "--kv-on-host needs --sp 1, got --sp ", in.parallel.sp);
  const auto& m = in.model;
  const double c = in.compute_bytes, s = std::max(4, in.compute_bytes);
  const double B = static_cast<double>(in.batch), S = static_cast<double>(in.seq_len);
  const int64_t C = std::min(chunk_tokens, in.seq_len);
  const double k = static_cast<double>((in.seq_len + C - 1) / C);
  const double T = static_cast<double>(C) * k * (k - 1) / 2;  // earlier keys summed over the chunks
  const double kv = 2.0 * static_cast<double>(m.kv_heads * m.head_dim);
  const double n = static_cast<double>(m.layers);
  const bool recompute = policy == "recompute";
  const bool rebuilds = recompute || policy == "memo";  // K, V rebuilt into the blocks in backward

  KvOnHostCost out;
  out.staging_bytes = B * static_cast<double>(C) * kv * std::max(2 * c, c + 2 * s);
  // Keep and offload hold every layer's K, V on the host until its backward
  // (the last layer's backward: all of them and its dK, dV); recompute and
  // memo one layer's K, V and dK, dV, rewritten in its backward.
  out.host_bytes = B * S * kv * ((rebuilds ? 1.0 : n) * c + s);
  out.link_to_host_bytes = n * B * kv * (S * c + T * s + (rebuilds ? S * c : 0.0));
  out.link_to_device_bytes = n * B * kv * (2 * T * c + T * s + S * s + (recompute ? T * c : 0.0));
  const auto& hw = in.hardware;
  if (hw.h2d_bytes_per_s > 0 && hw.d2h_bytes_per_s > 0)
    out.link_s = out.link_to_device_bytes / hw.h2d_bytes_per_s + out.link_to_host_bytes / hw.d2h_bytes_per_s;
  return out;
}

KvOnHostCost kv_on_host_cost(const PlanInputs& in, const ChunkMemory& m) {
  auto out = kv_on_host_cost(in, m.policy, m.chunk_tokens);
  for (const auto& part : m.whole_sequence)
    if (part.name == kLayerKvPart || part.name == kKvAccumulatorPart || part.name == kEveryLayerKvPart)
      out.removed_bytes += part.bytes;
  out.device_bytes = m.device_bytes - out.removed_bytes + out.staging_bytes;
  // Offload's own per-layer K, V host slots are not allocated with
  // --kv-on-host: the stream's blocks (host_bytes) replace them (memo has
  // none: it rebuilds K, V).
  double replaced_host = 0;
  for (const auto& part : m.host)
    if (part.name == kEveryLayerKvPart) replaced_host += part.bytes;
  out.fits = out.device_bytes <= in.hardware.device_bytes &&
             m.host_bytes - replaced_host + out.host_bytes <= in.hardware.host_share();
  return out;
}

int64_t auto_chunk_tokens_kv_on_host(const PlanInputs& in, const std::string& policy, int64_t unit) {
  require_input(in.parallel.sp == 1, "--kv-on-host needs --sp 1, got --sp ", in.parallel.sp);
  require_input(unit >= 1, "chunk unit ", unit, ": expected at least 1 token");
  if (chunk_memory(in, policy, 0).fits_device) return in.seq_len;  // validates in and policy
  // Below the sequence only: a chunk of the whole sequence is unchunked, which did not fit.
  return longest_fitting(unit, [&](int64_t chunk) {
    return chunk < in.seq_len && kv_on_host_cost(in, chunk_memory(in, policy, chunk)).device_bytes <= in.hardware.device_bytes;
  });
}

}  // namespace memo::plan
