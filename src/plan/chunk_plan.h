// The device-memory model of token-chunked layer execution (issue 14,
// docs/design.md section 9, docs/chunks.md): for a model shape, sequence, batch,
// activation policy and chunk of C tokens, the per-GPU device bytes split into
// weights and optimizer state, whole-sequence tensors (what a layer boundary
// and attention need over every token), chunk buffers (the rounding buffers,
// sized by C) and chunk transients (one chunk's backward working set); the
// host bytes; the `auto` chunk (the largest that fits the device; memo's
// also weighs the attention its short host makes it recompute); and the
// longest context per policy under both the device and the host bound.
// Pure C++ (no torch). It models train/chunk_program's executor; on one
// device and on 2 ranks of --sp 2 its static, whole-sequence and buffer parts
// equal the run's measured split (tests/test_peak_split_plan.cpp), its
// transients are within 2x.
//
// Scope: Llama-family models, one GPU per replica or Ulysses sequence
// parallelism (tp = cp = 1; under sp > 1 chunks are chunks of a GPU's shard
// of seq_len / sp tokens, with the head-layout K, V and what backward keeps
// waiting, docs/chunks.md); data x sp parallel degrees shard the optimizer
// state.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "plan/cost_model.h"

namespace memo::plan {

// One named part of a split, with its bytes per token where it scales with
// the tokens (0 for the fixed-size parts).
struct BytesPart {
  std::string name;
  double bytes = 0;
  double bytes_per_token = 0;  // per token of the batch x sequence
};

// The names of the whole-sequence parts of a chunked layer: one source for
// this model, the run's `chunks` header line and its measured peak split
// (train/chunking.h, train/memory_split.h), so they cannot drift.
namespace whole_part {
inline constexpr const char* kHidden = "hidden state (layer input and output; dy and dx)";
inline constexpr const char* kLayerKv = "K and V of the layer";
inline constexpr const char* kKvAccumulators = "dK and dV accumulators";
// Under sp (Ulysses): K, V and their accumulators in head layout, and what
// backward keeps of each chunk until dK, dV are complete.
inline constexpr const char* kHeadKv = "K and V in head layout";
inline constexpr const char* kHeadKvAccumulators = "dK and dV accumulators (head layout)";
inline constexpr const char* kWaiting = "dq and input of each chunk, waiting for dK and dV";
inline constexpr const char* kEveryLayerKv = "every layer's K and V";  // keep's, chunked
}  // namespace whole_part

// One policy at one chunk size, per GPU.
struct ChunkMemory {
  std::string policy;          // keep | recompute | offload | memo
  int64_t chunk_tokens = 0;    // the chunk as run: min(C, shard); the shard (seq_len / sp) when unchunked
  int64_t chunks = 0;          // ceil(shard / chunk_tokens)
  // Weights (compute copy + master), gradients, Adam moments.
  double weight_bytes = 0, grad_bytes = 0, optimizer_bytes = 0;
  double static_bytes = 0;     // their sum
  // Whole-sequence tensors: the hidden state across a layer boundary (input
  // and output, or dy and dx in backward), with chunked layers K and V of the
  // layer and their gradient accumulators, and what the policy keeps over
  // every token (keep: every layer's skeletal set, and chunked every layer's
  // K and V; recompute: every layer's input).
  std::vector<BytesPart> whole_sequence;
  double whole_sequence_bytes = 0;
  double whole_sequence_bytes_per_token = 0;
  // The rounding buffers (offload, memo: two chunks' skeletal sets without
  // their input, each chunk's own k and v included) and the two inputs in
  // flight restored beside them; keep, recompute: none (recompute's rebuilt
  // chunk is a transient).
  double chunk_buffer_bytes = 0;
  double chunk_buffer_bytes_per_token = 0;  // per token of the chunk
  // One chunk's backward working set (docs/memory-per-token.md per token of
  // the chunk, with chunked attention's dq accumulator), the largest weight-
  // gradient product, or the loss chunk: the larger.
  double chunk_transient_bytes = 0;
  double reserve_bytes = 0;    // Hardware::reserve_bytes
  double device_bytes = 0;     // static + whole-sequence + buffers + transients + reserve
  // Pinned host bytes, the activation store's host pool to its 16-byte slot
  // alignment (offload: every unit's skeletal set; memo: x, o and lse of
  // every unit but the last two and, at alpha > 0, floor(alpha C) tokens of
  // each swapped unit's other tensors, the rest recomputed token-wise;
  // chunked offload also every layer's K and V, which duplicate the k, v
  // inside each chunk's qkv slot), and its parts.
  std::vector<BytesPart> host;
  double host_bytes = 0;
  // Chunked memo rebuilds each layer's K and V in its backward from the
  // chunks' inputs instead of keeping them on the host: per step, the
  // inputs of the swapped units copied to the device once more (h c per
  // token) and the FLOPs of the QKV projection that rebuilds them (2 h q
  // per token of every layer; the norm and RoPE, O(h) per token, left out
  // as the cost model leaves elementwise work out). 0 otherwise.
  double rebuild_h2d_bytes = 0;
  double rebuild_flops = 0;
  // memo's device tier (plan/swap_split.h): at alpha 0, where the host share
  // cannot hold x, o and lse of every swapped unit, those of the fewest whole
  // units that cover the shortfall stay on the device (in device_bytes, out
  // of host_bytes and its x, o, lse part), as many as the device has room
  // for beside everything else it holds. 0 otherwise.
  int64_t fixed_on_device_units = 0;
  double fixed_on_device_bytes = 0;
  // memo's x-only units (one GPU per replica: attention is local, not under
  // sp > 1): what the tier cannot take of the shortfall, units that keep only
  // x on the host cover; their o and lse are not kept at all but recomputed
  // in backward by running the unit's attention forward again against the
  // layer's rebuilt K, V. The fewest that cover it, the earliest chunks
  // first (chunk 0 of every layer, then chunk 1, ...: the shortest causal
  // prefixes), each leaving (a c + nh s) per token of a full unit off the
  // host (out of host_bytes and its x, o, lse part); the FLOPs of that
  // recompute per step, 4 a B C^2 (k + 1/2) for chunk index k. 0 otherwise.
  int64_t attention_recomputed_units = 0;
  double attention_recomputed_bytes = 0;
  double attention_recompute_flops = 0;
  bool fits_device = false, fits_host = false;
  bool fits() const { return fits_device && fits_host; }
};

// The longest context one policy fits, at a fixed chunk or with the auto one.
struct LongestContext {
  std::string policy;
  int64_t seq_len = 0;         // 0: not even one unit fits
  int64_t chunk_tokens = 0;    // the chunk used there
  std::string limited_by;      // "device", "host" or "search cap"
};

struct ChunkPlanInputs {
  PlanInputs plan;             // model, seq_len, batch, hardware, dtypes, loss chunk
  int64_t chunk_tokens = 0;    // C >= 1; 0: the whole sequence (today's execution)
  bool auto_chunk = false;     // the largest multiple of chunk_unit that fits (overrides chunk_tokens)
  int64_t chunk_unit = 1024;   // the granularity of the auto chunk and of the longest context
};

struct ChunkPlan {
  ChunkPlanInputs in;
  std::vector<ChunkMemory> policies;        // keep, recompute, offload, memo at the chosen chunks
  std::vector<LongestContext> longest;      // the same order
};

// Throws InputError naming the value: the plan inputs (validate_plan_inputs),
// a chunk below 0, a unit below 1, a model the chunk model does not cover.
void validate_chunk_inputs(const ChunkPlanInputs& in);

// One policy at chunk_tokens (>= 1; 0 for the whole sequence); validates.
// memo_alpha: memo's offloaded fraction for its host bytes (0: its least,
// what the longest context and the fit are judged by).
ChunkMemory chunk_memory(const PlanInputs& in, const std::string& policy, int64_t chunk_tokens,
                         double memo_alpha = 0);

// The whole-sequence tensors of one layer as the executor holds them on a
// GPU, without what the policy keeps (bytes_per_token per token of the GPU's
// shard; bytes 0): the hidden state, and with chunked layers (chunked: more
// than one chunk) K and V of the layer and their accumulators, under sp > 1
// (tp = cp = 1) the accumulators in head layout, K and V in head layout too,
// and each chunk's waiting dq and input. c: compute element size.
std::vector<BytesPart> layer_whole_sequence(const ModelShape& m, int compute_bytes, int64_t sp, bool chunked);

// The largest chunk for `policy` that fits the device: the GPU's shard
// (seq_len / sp; one chunk) when that fits, else the largest multiple of unit below it
// that does; 0 when not even unit tokens fit. Device bytes grow with the
// chunk, so this is the fit's edge: unit more tokens do not fit.
// memo, where the device's largest chunk needs x-only units (or does not
// fit the host) and its smallest chunk (unit tokens) fits device and host:
// the fewest chunks per layer, at the shortest chunk giving them, whose
// attention_recompute_flops stay within 2% of the step's attention FLOPs
// (or 10% above the smallest chunk's); a longer chunk leaves the device
// tier less room, so more units keep only x. Where the smallest does not
// fit, the device's largest as above.
int64_t auto_chunk_tokens(const PlanInputs& in, const std::string& policy, int64_t unit);

// The longest sequence (a multiple of unit) at which `policy` fits both the
// device and its host share, at chunk_tokens (0: unchunked) or, with
// auto_chunk, at the smallest chunk (unit tokens: what fits longest).
LongestContext longest_context(const PlanInputs& in, const std::string& policy, int64_t chunk_tokens,
                               bool auto_chunk, int64_t unit);

// The Ulysses all-to-alls per layer with layers in chunks of chunk_tokens of
// a rank's shard (seq_len / cp / sp; docs/chunks.md), per chunk: forward k, v
// to head layout, then q to heads and o, lse back (4); backward k, v to
// heads, d_o, q, o, lse to heads, dq back, and dk, dv back once complete (7);
// recompute adds q to heads and o, lse back (3). Each all-to-all is exact, so
// the bytes are the whole layer's (ulysses_policy_layer), except recompute's,
// which resends q, o, lse but not k, v. A chunk of at least the shard (or 0):
// ulysses_policy_layer itself.
UlyssesPolicyLayer ulysses_chunked_policy_layer(const PlanInputs& in, const std::string& policy,
                                                int64_t chunk_tokens);
// comm_plan with its all-to-alls at that chunk.
CommPlan chunked_comm_plan(const PlanInputs& in, const std::string& policy, int64_t chunk_tokens,
                           double recomputed, double compute_s);

// Every policy at in.chunk_tokens (or its own auto chunk) and its longest context.
ChunkPlan make_chunk_plan(const ChunkPlanInputs& in);

}  // namespace memo::plan
