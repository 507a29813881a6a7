// --chunk-tokens (docs/chunks.md): its values as given ("0", "4096", "auto";
// bench takes a comma-separated list), checked before anything is built,
// and resolved into the tokens per chunk a run uses, `auto` from the chunk
// memory model (plan/chunk_plan.h) for the device's memory; plus the
// whole-sequence tensors of a chunked layer, with their bytes per token, for
// the run header.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "plan/cost_model.h"

namespace memo::train {

// One value of --chunk-tokens.
struct ChunkSetting {
  bool automatic = false;  // "auto"
  int64_t tokens = 0;      // >= 1; 0: whole layers
  std::string text() const { return automatic ? "auto" : std::to_string(tokens); }
};

// Every value of a comma-separated list (train: one). Throws InputError
// naming --chunk-tokens and the value for anything but a non-negative
// integer or "auto" (a negative C included), and for an empty list.
std::vector<ChunkSetting> parse_chunk_tokens(const std::string& text);
// The one value train takes; a list is refused naming `memo bench`.
ChunkSetting parse_one_chunk_setting(const std::string& text);

// What a run needs to resolve `auto`.
struct ChunkContext {
  model::ModelConfig config;
  int64_t batch = 1;
  int64_t seq_len = 1;
  std::string policy = "keep";
  c10::Device device = c10::Device(c10::DeviceType::CPU);
  c10::ScalarType compute_dtype = c10::ScalarType::Float;
  int64_t sp = 1;              // sequence parallel degree (seq_len is the rank's shard)
  int64_t dp = 1;              // data parallel degree (with sp: the ZeRO group of the model state)
  int zero = 0;                // the run's ZeRO stage (its shards of the model state)
  double device_bytes = 0;     // what the device has (CUDA: total; CPU: host RAM available)
  bool kv_on_host = false;     // --kv-on-host: auto counts K, V in host blocks (plan/kv_on_host_plan.h)
  // This rank's pinned host pool budget (--host-memory-gib or derived): on
  // CUDA, memo's auto chunk leaves device room for the x, o, lse the host
  // cannot hold (its device tier), or where no chunk does, keeps the units
  // that hold only x (their attention recomputed) near the fewest
  // (plan::auto_chunk_tokens); 0, or on CPU (no spare device apart from the
  // host): the host is taken as unbounded.
  double host_budget_bytes = 0;
};

// The chunk memory model's inputs for the run (plan/chunk_plan.h): the
// whole sequence (seq_len x sp) over sp x dp GPUs at the run's ZeRO stage,
// the device's memory, the run's loss chunk.
plan::PlanInputs chunk_plan_inputs(const ChunkContext& ctx);

// Tokens per chunk the run uses: 0 when its layers run whole (0 given, or a
// chunk of at least the sequence, or `auto` choosing the whole sequence);
// else C, or for `auto` the largest multiple of 1024 tokens (or of the
// sequence's 1/8, for short ones) that plan/chunk_plan.h says fits
// `device_bytes`. Throws InputError when `auto` finds no chunk that fits.
// Under --sp > 1 the chunks are chunks of the rank's shard (seq_len local),
// and `auto` counts the head-layout parts sp adds (chunk_plan_inputs).
int64_t resolve_chunk_tokens(const ChunkSetting& setting, const ChunkContext& ctx);

// The whole-sequence tensors of a chunked layer on the device, bytes per
// token of the batch x the rank's shard: plan/chunk_plan.h's
// layer_whole_sequence (the same parts, by the same names): the hidden state
// (x and y in forward, dy and dx in backward: 2 h c), K and V of the current
// layer (2 nkv d c) and their gradient accumulators (2 nkv d s); under
// --sp > 1 the accumulators in head layout instead, K and V in head layout
// too (2 max(nkv, sp) d c and s), and each chunk's dq and input waiting for
// them ((nh d + h) c). chunked false: the hidden state alone.
struct WholeSequenceTensor {
  std::string name;
  int64_t bytes_per_token = 0;
};
std::vector<WholeSequenceTensor> whole_sequence_tensors(const model::ModelConfig& c, c10::ScalarType compute,
                                                        int64_t sp = 1, bool chunked = true, bool kv_on_host = false);
// "hidden state 2x4 KiB, K,V 1 KiB, dK,dV 2 KiB = 11 KiB per token".
std::string describe_whole_sequence(const model::ModelConfig& c, c10::ScalarType compute, int64_t sp = 1,
                                    bool kv_on_host = false);  // --kv-on-host: without K, V and dK, dV

}  // namespace memo::train
