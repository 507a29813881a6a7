// The chunked-execution memory model (see chunk_plan.h and docs/chunks.md).
// Per token of batch x the GPU's sequence (its shard under sp), with c the compute and s the
// statistics element size (fp32, or fp64 in float64 runs), h hidden, f ffn,
// a = nh d, q = (nh + 2 nkv) d, kv = 2 nkv d, skel one layer's skeletal set
// (its input x included):
//   static          weights (the compute copy only when its dtype is not the
//                   master's: a float32 run computes on the master weights),
//                   gradients, Adam moments
//   whole-sequence  2 h c (a layer's input and output, or dy and dx)
//                   + chunked layers: kv c (K, V) + kv s (dK, dV accumulated
//                     over chunks); whole layers have neither (K and V are in
//                     the layer's skeletal set, dK and dV in its transients)
//                   + keep: n skel, and chunked n kv c (every layer's K and V,
//                     the layer's own among them); recompute: n h c (each
//                     layer's input)
//   chunk buffers   per chunk token, skel x 2 (offload, memo: the two
//                   rounding buffers hold every skeletal tensor of a chunk but
//                   its input, each chunk's own k and v included, and the
//                   inputs of the two units in flight are restored beside
//                   them), 0 (keep, recompute: it has no buffers)
//   transients      max(C (c max(2f + h, h + a + q, h + 2q, 2h + q) + (a + nh) s)
//                       + c x the largest weight matrix, the loss phase: one
//                       loss chunk + what 3 h c per token (the last layer's
//                       output, the final norm's output and its gradient)
//                       exceeds the layers' whole-sequence part)
//                   + recompute: the chunk's rebuilt set, C (skel - h c)
//   host            offload n skel; memo (h c + a c + nh s) on every token of
//                   every unit but the last two (whole layers: n - 2 layers;
//                   chunked: n S less the last layer's last two chunks), its
//                   least at alpha 0; alpha adds skel - h c - a c - nh s on
//                   floor(alpha C) tokens of each swapped unit (all of a
//                   shorter last chunk's up to that); chunked offload adds
//                   n kv c (every layer's K and V, a copy of the k, v in each
//                   chunk's qkv); chunked memo rebuilds K, V in backward from
//                   the units' inputs instead (not a host part: rebuild_h2d_bytes,
//                   the swapped units' h c again, and rebuild_flops, n 2 h q);
//                   memo at alpha 0 on a host short of its x, o, lse holds
//                   those of the fewest whole units that cover the shortfall
//                   on the device instead, as many as the device has room
//                   for (fixed_on_device_bytes, added to the device bytes:
//                   the device tier); without sp, what the tier cannot take
//                   the fewest x-only units cover, earliest chunks first:
//                   each keeps x alone on the host, its o and lse ((a c +
//                   nh s) per token, attention_recomputed_bytes) recomputed
//                   in backward by its chunk's attention forward against
//                   the rebuilt K, V (4 a C^2 (k + 1/2) per sequence for
//                   chunk index k: attention_recompute_flops)
// What a CPU run measures of these (train/memory_split.h) is compared with
// them in tests/test_peak_split_plan.cpp (one device).
// Under sp (Ulysses), whole-sequence adds K, V and dK, dV in head layout
// (2 max(nkv, sp) d (c + s), replacing the token-layout dK, dV) and each
// chunk's waiting dq and input ((a + h) c); transients 4 a c per chunk token.
// The loss phase's whole-sequence tensors (3 h c) can exceed the layers'
// (2 h c, chunked K, V and dK, dV: keep's and small float32 models'), so its
// transient is one loss chunk plus the excess; the larger transient added to
// the layers' whole-sequence part bounds both phases. (The runtime keeps the
// loss phase to that: the final norm and the embedding gradient run in
// chunk-sized blocks, and swapping policies let go of the last layer's input
// and K, V before the loss: train/step.cpp, ActivationStore::forward_done.)
#include "plan/chunk_plan.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "plan/swap_split.h"

namespace memo::plan {

namespace {

constexpr const char* kPolicies[] = {"keep", "recompute", "offload", "memo"};

bool known_policy(const std::string& p) {
  for (const char* k : kPolicies)
    if (p == k) return true;
  return false;
}

// A GPU's tokens of one sequence: the whole sequence, or its shard under sp.
int64_t shard_tokens(const PlanInputs& in) { return in.seq_len / in.parallel.sp; }

// Bytes per token of the GPU's shard of one layer's skeletal set, as
// plan/cost_model.h lists it (per GPU).
double skeletal_per_token(const PlanInputs& in) {
  double total = 0;
  for (const auto& t : skeletal_bytes(in)) total += t.bytes;
  return total / (static_cast<double>(in.batch) * static_cast<double>(shard_tokens(in)));
}

void validate_chunk(const PlanInputs& in, int64_t chunk_tokens) {
  validate_plan_inputs(in);
  require_input(in.model.arch == ModelArch::Llama, "chunked execution is modelled for Llama-family ",
                "models, not ", in.model.name);
  const auto& p = in.parallel;
  require_input(p.tp == 1 && p.cp == 1,
                "chunked execution is modelled on one GPU per replica or Ulysses (--tp, --cp 1; --sp, --dp any), "
                "got --tp ", p.tp, " --cp ", p.cp);
  require_input(chunk_tokens >= 0, "--chunk-tokens ", chunk_tokens,
                ": expected a chunk of at least 1 token, 0 for the whole sequence, or auto");
}

// chunk_memory after validation.
ChunkMemory evaluate(const PlanInputs& in, const std::string& policy, int64_t chunk_tokens, double memo_alpha = 0) {
  const auto& m = in.model;
  const auto& hw = in.hardware;
  ChunkMemory cm;
  cm.policy = policy;
  const int64_t shard = shard_tokens(in);
  const bool sp = in.parallel.sp > 1;
  cm.chunk_tokens = chunk_tokens == 0 ? shard : std::min(chunk_tokens, shard);
  cm.chunks = (shard + cm.chunk_tokens - 1) / cm.chunk_tokens;

  // The model state a rank holds, as the whole-step plan counts it (ZeRO's
  // shards on many ranks; one device: a compute dtype equal to the master's
  // computes on the master weights, no copy).
  const auto held = static_bytes_per_gpu(in);
  cm.weight_bytes = held.weights;
  cm.grad_bytes = held.grads;
  cm.optimizer_bytes = held.optimizer;
  cm.static_bytes = cm.weight_bytes + cm.grad_bytes + cm.optimizer_bytes;

  const double c = in.compute_bytes, s = std::max(4, in.compute_bytes);
  const double n = static_cast<double>(m.layers), h = static_cast<double>(m.hidden);
  const double f = static_cast<double>(m.ffn), nh = static_cast<double>(m.heads);
  const double a = nh * static_cast<double>(m.head_dim);
  const double kv = 2.0 * static_cast<double>(m.kv_heads * m.head_dim);
  const double q = a + kv;
  const double skel = skeletal_per_token(in);
  const double tokens = static_cast<double>(in.batch) * static_cast<double>(shard);
  const double chunk = static_cast<double>(in.batch) * static_cast<double>(cm.chunk_tokens);

  auto whole = [&](const std::string& name, double per_token) {
    cm.whole_sequence.push_back({name, per_token * tokens, per_token});
    cm.whole_sequence_bytes += per_token * tokens;
    cm.whole_sequence_bytes_per_token += per_token;
  };
  const bool chunked = cm.chunks > 1;  // one chunk is the whole layer, as the runtime runs it
  for (const auto& part : layer_whole_sequence(m, in.compute_bytes, in.parallel.sp, chunked))
    if (policy != "keep" || part.name != whole_part::kLayerKv)  // keep: among every layer's K and V
      whole(part.name, part.bytes_per_token);
  // What of it the loss phase frees for its own (the policies' extras below stay).
  const double layers_part_per_token = cm.whole_sequence_bytes_per_token;
  if (policy == "keep") whole("every layer's skeletal set", n * skel);
  if (policy == "keep" && chunked) whole(whole_part::kEveryLayerKv, n * kv * c);
  if (policy == "recompute") whole("every layer's input", n * h * c);

  // A unit's skeletal set without its input x (a view of the layer's input).
  const double unit_set = skel - h * c;
  const double buffers = policy == "offload" || policy == "memo" ? 2.0 : 0.0;
  cm.chunk_buffer_bytes_per_token = buffers * skel;  // the buffers (unit_set each) and the two inputs in flight
  cm.chunk_buffer_bytes = cm.chunk_buffer_bytes_per_token * chunk;

  // Under sp, a chunk's attention backward holds d_o, q, o and dq in head
  // layout too (4 a c per chunk token).
  const double working = c * std::max({2.0 * f + h, h + a + q, h + 2.0 * q, 2.0 * h + q}) + (a + nh) * s +
                         (sp ? 4.0 * a * c : 0.0);
  const double largest_matrix = std::max({2.0 * f * h, q * h, a * h});
  const double rebuilt = policy == "recompute" ? chunk * unit_set : 0.0;  // recompute's rebuilt unit
  // The loss phase: the last layer's output, the final norm's output and its
  // gradient (3 h c per token) in place of the layers' part, and one loss chunk.
  const double loss_phase = in.loss_chunk_bytes + tokens * std::max(0.0, 3.0 * h * c - layers_part_per_token);
  cm.chunk_transient_bytes = std::max(chunk * working + largest_matrix * c, loss_phase) + rebuilt;
  cm.reserve_bytes = hw.reserve_bytes;
  cm.device_bytes = cm.static_bytes + cm.whole_sequence_bytes + cm.chunk_buffer_bytes +
                    cm.chunk_transient_bytes + cm.reserve_bytes;

  // The host pool (runtime/activation_store.h): per swapped unit its
  // skeletal slots; chunked, besides them, every layer's K and V, so a
  // chunk's k and v are on the host twice (in its qkv slot and in its
  // layer's K, V slot; backward reads them from the latter).
  auto host = [&](const char* name, double bytes) {
    cm.host.push_back({name, bytes, bytes / tokens});
    cm.host_bytes += bytes;
  };
  const double fixed = h * c + a * c + nh * s;  // x, o, lse: every token of a swapped unit
  if (policy == "offload") host("every unit's skeletal set", n * skel * tokens);
  if (policy == "memo") {
    // Every unit is swapped but the last two: the last two layers, or
    // chunked the last layer's last two chunks (the last one the shorter).
    // A swapped unit of n tokens keeps min(floor(alpha C), n) tokens of its
    // other tensors, as runtime/swap_policy.cpp places them.
    const int64_t last = shard - (cm.chunks - 1) * cm.chunk_tokens;  // the last chunk's tokens
    const int64_t units = m.layers * cm.chunks;
    const int64_t offloaded = static_cast<int64_t>(std::floor(memo_alpha * static_cast<double>(cm.chunk_tokens)));
    // Counted, not walked (the longest-context search reaches billions of
    // units): of the two units held back, one is a last chunk when a layer
    // has two chunks or more, both when it has one.
    const int64_t held = std::min<int64_t>(2, units);
    const int64_t swapped_last = m.layers - (cm.chunks >= 2 ? std::min<int64_t>(1, held) : held);  // shorter chunks
    const double swapped_full = static_cast<double>(units - held - swapped_last);
    const double last_units = static_cast<double>(swapped_last);
    // Tokens of the swapped units, and of their offloaded share.
    const double swapped = swapped_full * static_cast<double>(cm.chunk_tokens) + last_units * static_cast<double>(last);
    const double rest = swapped_full * static_cast<double>(std::min(offloaded, cm.chunk_tokens)) +
                        last_units * static_cast<double>(std::min(offloaded, last));
    const double batch = static_cast<double>(in.batch);
    host("x, o and lse of the swapped units", fixed * swapped * batch);
    if (rest > 0) host("the offloaded share of their other tensors", (skel - fixed) * rest * batch);
    if (chunked) {
      // K and V rebuilt in each layer's backward (runtime/kv_rebuild.h):
      // every swapped unit's input back from the host once more, and every
      // layer's QKV projection again. The rebuild's device bytes (its two
      // staging inputs, a chunk's n1 and qkv: C (3 h + q) c) run before the
      // layer's dx and dK, dV accumulators exist and with no chunk's
      // working set live, which the whole-sequence and transient parts
      // already count, so they add nothing to the device bytes.
      cm.rebuild_h2d_bytes = h * c * swapped * batch;
      cm.rebuild_flops = n * 2.0 * h * q * tokens;
    }
  }
  // Chunked offload keeps every layer's K and V on the host until its backward.
  if (chunked && policy == "offload") host(whole_part::kEveryLayerKv, n * kv * c * tokens);
  if (policy == "memo" && memo_alpha == 0 && cm.host_bytes > hw.host_share()) {
    // The host share is short of x, o, lse of every swapped unit. A full
    // unit's bytes each, as the runtime's LP counts them (plan/swap_split.h).
    const double per_unit = std::max(fixed * chunk, 1.0);
    const double per_attention = std::max((a * c + nh * s) * chunk, 1.0);  // o, lse
    const int64_t swapped = m.layers * cm.chunks - std::min<int64_t>(2, m.layers * cm.chunks);
    // memo's device tier: the fewest latest units whose x, o, lse cover the
    // shortfall stay on the device, as many as its room holds; x-only units
    // cover the rest (under sp their attention's all-to-alls run again too;
    // the ranks agree on the units).
    const auto cover = cover_host_shortfall(cm.host_bytes - hw.host_share(), per_unit, per_attention, swapped,
                                            hw.device_bytes - cm.device_bytes);
    cm.fixed_on_device_units = cover.on_device;
    cm.fixed_on_device_bytes = std::min(static_cast<double>(cover.on_device) * per_unit, cm.host.front().bytes);
    if (cover.x_only > 0) {
      const auto x_only = static_cast<double>(cover.x_only);
      cm.attention_recomputed_units = cover.x_only;
      // o and lse of what the tier left on the host at most (a shorter last chunk counts as full above).
      cm.attention_recomputed_bytes =
          std::min(x_only * per_attention, (cm.host.front().bytes - cm.fixed_on_device_bytes) * (fixed - h * c) / fixed);
      // Chunk k's causal attention forward (QK^T and PV) over its C queries:
      // 4 a B C^2 (k + 1/2). Counted in rounds of one chunk index per layer
      // (r full rounds, rem units of the next), not walked: the longest-
      // context search reaches millions of units. The rounds are counted
      // full of L units, as if the two held units and the tier's (the
      // latest chunks) were not there: where x-only units reach those
      // chunks, the run takes units of a later round instead and the count
      // is low by their extra rounds (the unit bound above skips them).
      const double L = static_cast<double>(m.layers);
      const double r = std::floor(x_only / L), rem = x_only - r * L;
      const double C = static_cast<double>(cm.chunk_tokens);
      cm.attention_recompute_flops =
          4.0 * a * static_cast<double>(in.batch) * C * C * (L * r * r / 2.0 + rem * (r + 0.5));
    }
    const double off_host = cm.fixed_on_device_bytes + cm.attention_recomputed_bytes;
    cm.host.front().bytes -= off_host;  // the x, o and lse part
    cm.host.front().bytes_per_token = cm.host.front().bytes / tokens;
    cm.host_bytes -= off_host;
    cm.device_bytes += cm.fixed_on_device_bytes;
  }
  cm.fits_device = cm.device_bytes <= hw.device_bytes;
  cm.fits_host = cm.host_bytes <= hw.host_share();
  return cm;
}

PlanInputs at_length(const PlanInputs& in, int64_t seq_len) {
  PlanInputs out = in;
  out.seq_len = seq_len;
  return out;
}

// memo's auto chunk on a short host: the share of the step's attention
// FLOPs its x-only units may run again (docs/chunks.md).
constexpr double kRecomputeShare = 0.02;

// The shortest multiple of unit that cuts shard tokens into n chunks (at
// least unit, at most the shard).
int64_t balanced_chunk(int64_t shard, int64_t n, int64_t unit) {
  const int64_t per = (shard + n - 1) / n;
  return std::min(shard, std::max(unit, (per + unit - 1) / unit * unit));
}

int64_t auto_chunk_unchecked(const PlanInputs& in, const std::string& policy, int64_t unit) {
  const int64_t shard = shard_tokens(in);
  int64_t device = shard;  // the largest chunk that fits the device
  if (!evaluate(in, policy, shard).fits_device) {
    // Below the shard only: longer chunks are one chunk, which did not fit.
    device = longest_fitting(unit, [&](int64_t chunk) {
      return chunk < shard && evaluate(in, policy, chunk).fits_device;
    });
  }
  if (policy != "memo" || device == 0) return device;
  // memo on a host short beyond the device tier's room: a longer chunk
  // leaves the tier less room and so needs more x-only units, whose
  // attention runs again. The fewest chunks per layer whose recompute stays
  // within kRecomputeShare of the step's attention FLOPs (or within 10% of
  // the smallest chunk's, where even that needs more), each count at the
  // shortest chunk that gives it (balanced chunks: the most room for the
  // tier). Where not even the smallest chunk fits, the device's largest, as
  // for the others. (A bound on the bytes instead, 10% above the smallest
  // chunk's, picked chunks of 2048 tokens for 1.5M with 100 GiB of host,
  // where 10 chunks of 157,696 recompute under 2% of the attention.)
  const auto at_device = evaluate(in, policy, device);
  if (at_device.fits() && at_device.attention_recomputed_units == 0) return device;
  const auto smallest = evaluate(in, policy, std::min(unit, shard));
  if (!smallest.fits()) return device;
  const double bound = std::max(kRecomputeShare * step_attention_flops(in), 1.1 * smallest.attention_recompute_flops);
  // Walked over the chunk counts, not searched: x-only units grow with the
  // chunk only up to the rounding to whole units and the two held units'
  // tokens, so the test can flip more than once. Each is a closed form.
  for (int64_t n = (shard + device - 1) / device; n <= shard; ++n) {
    const int64_t chunk = balanced_chunk(shard, n, unit);
    if (chunk > device) continue;
    const auto m = evaluate(in, policy, chunk);
    if (m.fits() && m.attention_recompute_flops <= bound) return chunk;
    if (chunk <= unit) break;
  }
  return std::min(unit, shard);
}

}  // namespace

std::vector<BytesPart> layer_whole_sequence(const ModelShape& m, int compute_bytes, int64_t sp, bool chunked) {
  const double c = compute_bytes, s = std::max(4, compute_bytes);
  const double h = static_cast<double>(m.hidden), a = static_cast<double>(m.heads * m.head_dim);
  const double kv = 2.0 * static_cast<double>(m.kv_heads * m.head_dim);
  std::vector<BytesPart> parts{{whole_part::kHidden, 0, 2.0 * h * c}};
  if (!chunked) return parts;
  parts.push_back({whole_part::kLayerKv, 0, kv * c});
  if (sp <= 1) {
    parts.push_back({whole_part::kKvAccumulators, 0, kv * s});
    return parts;
  }
  // Head layout [B, sp S_local, 2 nkv_local d]: per token of the shard,
  // 2 nkv d, or 2 sp d when sp replicates the kv heads (docs/chunks.md).
  const double kv_heads = 2.0 * static_cast<double>(std::max(m.kv_heads, sp) * m.head_dim);
  parts.push_back({whole_part::kHeadKv, 0, kv_heads * c});
  parts.push_back({whole_part::kHeadKvAccumulators, 0, kv_heads * s});
  parts.push_back({whole_part::kWaiting, 0, (a + h) * c});
  return parts;
}

void validate_chunk_inputs(const ChunkPlanInputs& in) {
  validate_chunk(in.plan, in.auto_chunk ? 0 : in.chunk_tokens);
  require_input(in.chunk_unit >= 1, "chunk unit ", in.chunk_unit, ": expected at least 1 token");
}

ChunkMemory chunk_memory(const PlanInputs& in, const std::string& policy, int64_t chunk_tokens, double memo_alpha) {
  validate_chunk(in, chunk_tokens);
  require_input(known_policy(policy), "unknown policy \"", policy, "\": keep, recompute, offload or memo");
  require_input(memo_alpha >= 0 && memo_alpha <= 1, "--alpha ", memo_alpha, ": expected a fraction in [0, 1]");
  return evaluate(in, policy, chunk_tokens, memo_alpha);
}

int64_t auto_chunk_tokens(const PlanInputs& in, const std::string& policy, int64_t unit) {
  validate_chunk(in, 0);
  require_input(known_policy(policy), "unknown policy \"", policy, "\": keep, recompute, offload or memo");
  require_input(unit >= 1, "chunk unit ", unit, ": expected at least 1 token");
  return auto_chunk_unchecked(in, policy, unit);
}

LongestContext longest_context(const PlanInputs& in, const std::string& policy, int64_t chunk_tokens,
                               bool auto_chunk, int64_t unit) {
  validate_chunk(in, auto_chunk ? 0 : chunk_tokens);
  require_input(known_policy(policy), "unknown policy \"", policy, "\": keep, recompute, offload or memo");
  require_input(unit >= 1, "chunk unit ", unit, ": expected at least 1 token");
  // With the auto chunk, a length fits when its smallest chunk does (the
  // bytes grow with the chunk).
  auto at = [&](int64_t seq_len) {
    return evaluate(at_length(in, seq_len), policy, auto_chunk ? unit : chunk_tokens);
  };
  LongestContext lc;
  lc.policy = policy;
  lc.seq_len = longest_fitting(unit, [&](int64_t seq_len) { return at(seq_len).fits(); });
  if (lc.seq_len > 0) {
    const auto here = at_length(in, lc.seq_len);
    lc.chunk_tokens = auto_chunk ? auto_chunk_unchecked(here, policy, unit) : evaluate(here, policy, chunk_tokens).chunk_tokens;
  }
  // What stops the next unit (longest_fitting searches up to 2^36 tokens).
  const int64_t next = lc.seq_len + unit;
  if (next > (int64_t{1} << 36)) {
    lc.limited_by = "search cap";
  } else {
    const auto beyond = at(next);
    lc.limited_by = !beyond.fits_device && !beyond.fits_host ? "device and host"
                    : !beyond.fits_device                    ? "device"
                                                             : "host";
  }
  return lc;
}

UlyssesPolicyLayer ulysses_chunked_policy_layer(const PlanInputs& in, const std::string& policy,
                                                int64_t chunk_tokens) {
  UlyssesPolicyLayer p = ulysses_policy_layer(in, policy);
  const int64_t shard = in.seq_len / in.parallel.cp / std::max<int64_t>(1, ulysses_group(in));  // a rank's tokens
  if (p.calls == 0 || chunk_tokens <= 0 || chunk_tokens >= shard) return p;
  const UlyssesLayer u = ulysses_layer(in);
  const bool recompute = policy == "recompute";
  const int64_t chunks = (shard + chunk_tokens - 1) / chunk_tokens;
  const int64_t forward = u.q + 2 * u.kv + u.q + u.lse;                    // k v in; q in; o, lse out
  const int64_t backward = 2 * u.kv + 3 * u.q + u.lse + u.q + 2 * u.kv;  // k v; d_o, q, o, lse in; dq, dk dv out
  p.forward = forward;
  p.backward = backward + (recompute ? 2 * u.q + u.lse : 0);
  p.calls = chunks * (4 + 7 + (recompute ? 3 : 0));
  return p;
}

CommPlan chunked_comm_plan(const PlanInputs& in, const std::string& policy, int64_t chunk_tokens,
                           double recomputed, double compute_s) {
  CommPlan c = comm_plan(in, policy, recomputed, compute_s);
  const UlyssesPolicyLayer u = ulysses_chunked_policy_layer(in, policy, chunk_tokens);
  if (u.calls == 0) return c;
  const auto& hw = in.hardware;
  const double link = ulysses_group(in) <= hw.gpus_per_host ? hw.intra_host_bytes_per_s : hw.inter_host_bytes_per_s;
  c.exposed_s -= c.all_to_all_s;
  c.all_to_all_bytes = static_cast<double>(in.model.layers) * static_cast<double>(u.forward + u.backward);
  c.all_to_all_calls = in.model.layers * u.calls;
  c.all_to_all_s = c.all_to_all_bytes / link + static_cast<double>(c.all_to_all_calls) * hw.collective_latency_s;
  c.exposed_s += c.all_to_all_s;
  return c;
}

ChunkPlan make_chunk_plan(const ChunkPlanInputs& in) {
  validate_chunk_inputs(in);
  ChunkPlan cp;
  cp.in = in;
  for (const char* policy : kPolicies) {
    int64_t chunk = in.chunk_tokens;
    if (in.auto_chunk) {
      chunk = auto_chunk_unchecked(in.plan, policy, in.chunk_unit);
      // Nothing fits: show the smallest chunk's bytes (and that it does not fit).
      if (chunk == 0) chunk = std::min(in.chunk_unit, in.plan.seq_len);
    }
    cp.policies.push_back(evaluate(in.plan, policy, chunk));
    cp.longest.push_back(longest_context(in.plan, policy, in.chunk_tokens, in.auto_chunk, in.chunk_unit));
  }
  return cp;
}

}  // namespace memo::plan
