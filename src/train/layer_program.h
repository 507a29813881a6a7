// The layer stack as a per-layer program (docs/design.md, "The step as a
// per-layer program"). For each layer, in order: where its weights come from
// (a weight source), its forward stages with an exchange around attention
// (pre-attention, attention, post-attention producing y), its skeletal set
// handed to the activation policy; in backward, layer by layer down, the
// policy restores the set and the mirrored stages run (post-attention
// backward -> d_o, attention backward -> dqkv, pre-attention backward -> dx),
// then a hook says the layer's gradients are complete. Training
// (forward_backward), forward_loss and `memo eval` all run the stack here.
//
// It lives in train/ (the step executor, docs/design.md section "Layers"): it
// drives pieces from runtime/ (policy, weight source, exchange, trace) and
// memory/ (the profiler's regions) over model/'s stages.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "model/llama.h"
#include "runtime/policy.h"
#include "runtime/stage_exchange.h"
#include "runtime/trace.h"
#include "runtime/weight_source.h"

namespace memo::train {

// Where a micro-batch's local tokens sit in the whole sequence: local token t
// is at global position first + t (a sequence shard or a chunk starts at a
// global position; one device and the whole sequence: 0).
struct TokenPositions {
  model::RopeTable rope;  // rows of global positions [0, first + S) at least
  int64_t first = 0;
};

// Called when layer `layer`'s parameter gradients for this micro-batch are
// complete in `grads` (where a reduce-scatter of them will start).
using LayerGradientsHook = std::function<void(int64_t layer, model::LayerWeights& grads)>;

// The whole-sequence tensors the chunked program allocates beyond those the
// run's peak split counts from the shapes (under sp: K, V and dK, dV in head
// layout, each chunk's waiting dq and input), by plan/chunk_plan.h's part
// name: the most bytes each held at once, over every layer and step
// (train/memory_split.h).
struct MeasuredParts {
  std::map<std::string, int64_t> bytes;
  void note(const std::string& name, int64_t held) {
    auto& most = bytes[name];
    most = std::max(most, held);
  }
};

// What the program runs on; the references must outlive it.
struct LayerProgramParts {
  const model::DecoderLayer& layer;
  int64_t layers = 0;
  runtime::WeightSource& weights;
  runtime::StageExchange& exchange;
  runtime::TraceRecorder* trace = nullptr;  // each layer's forward and backward as a compute span
  LayerGradientsHook on_layer_gradients;    // may be empty
  // Tokens per chunk (docs/chunks.md, train/chunk_program.cpp): each layer
  // runs over chunks of this many local tokens when it is below the
  // sequence; 0 (or >= the sequence): whole layers, as before.
  int64_t chunk_tokens = 0;
  // Called before layer `layer`'s backward adds into grads.layers[layer]
  // (LlamaModel::layer_grads: allocates gradients released after the last
  // reduce-scatter, ZeRO 2-3); may be empty.
  std::function<void(int64_t layer)> before_layer_gradients;
  MeasuredParts* measured = nullptr;  // where the chunked program notes its parts; may be null
};

class LayerProgram {
 public:
  explicit LayerProgram(LayerProgramParts parts) : parts_(std::move(parts)) {}

  // x [B, S, h] through every layer -> the last layer's output [B, S, h].
  // With a policy (its begin_step called), each layer writes into the storage
  // the policy offers and hands it the skeletal set; without, nothing is kept
  // (evaluation).
  at::Tensor forward(at::Tensor x, const TokenPositions& pos,
                     runtime::ActivationPolicy* policy = nullptr);
  // dy [B, S, h] at the last layer's output -> dx [B, S, h] at the first
  // layer's input, layer by layer down; the policy restores each skeletal set
  // and the parameter gradients are added into grads.layers.
  at::Tensor backward(at::Tensor dy, const TokenPositions& pos, runtime::ActivationPolicy& policy,
                      model::ModelWeights& grads);

  // One layer's forward stages with the exchange between them: fills acts
  // (acts.x = x), returns y [B, S, h].
  at::Tensor forward_layer(const model::LayerWeights& w, const TokenPositions& pos,
                           const at::Tensor& x, model::LayerActivations& acts);
  // One layer's backward stages with the exchange between them: dy -> dx,
  // gradients added into `grads`.
  at::Tensor backward_layer(const model::LayerWeights& w, model::LayerWeights& grads,
                            const TokenPositions& pos, const model::LayerActivations& acts,
                            const at::Tensor& dy);

  // Whether a sequence of `tokens` local tokens runs in chunks.
  bool chunked(int64_t tokens) const { return parts_.chunk_tokens > 0 && parts_.chunk_tokens < tokens; }
  // Layer `index`'s forward chunk by chunk (train/chunk_program.cpp): each
  // chunk's skeletal set to the policy as unit {index, chunk}, the layer's
  // K and V [B, S, 2 nkv d] after the last chunk; returns y [B, S, h].
  at::Tensor forward_layer_chunks(int64_t index, const model::LayerWeights& w, const TokenPositions& pos,
                                  const at::Tensor& x, runtime::ActivationPolicy* policy);
  // Layer `index`'s backward chunk by chunk, last to first: dy -> dx
  // [B, S, h], gradients added into `grads`.
  at::Tensor backward_layer_chunks(int64_t index, const model::LayerWeights& w, model::LayerWeights& grads,
                                   const TokenPositions& pos, const at::Tensor& dy,
                                   runtime::ActivationPolicy& policy);

 private:
  // The chunked layer under sequence parallelism (docs/chunks.md): two
  // passes forward (K, V of every chunk to head layout, then the queries),
  // three backward (K, V; attention backward; pre-attention backward once
  // dK, dV are complete).
  at::Tensor forward_layer_chunks_exchanged(int64_t index, const model::LayerWeights& w, const TokenPositions& pos,
                                            const at::Tensor& x, runtime::ActivationPolicy* policy);
  at::Tensor backward_layer_chunks_exchanged(int64_t index, const model::LayerWeights& w,
                                             model::LayerWeights& grads, const TokenPositions& pos,
                                             const at::Tensor& dy, runtime::ActivationPolicy& policy);
  // A chunk's attention in forward: its qkv [B, n, (nh+2nkv) d] (tokens
  // [t0, t0 + n), chunk index `chunk`) -> o, lse (resident K and V, streamed
  // from the host, or exchanged under sequence parallelism).
  using ChunkAttention = std::function<model::AttentionResult(const at::Tensor& qkv, int64_t chunk, int64_t t0)>;
  // A chunk's attention backward: d_o [B, n, nh d] and its skeletal set ->
  // dqkv [B, n, (nh+2nkv) d], dK, dV of earlier keys kept wherever they add up.
  using ChunkAttentionBackward =
      std::function<at::Tensor(at::Tensor d_o, const model::LayerActivations& acts, int64_t chunk, int64_t t0)>;
  // The forward chunk loop every chunked layer runs: pre-attention, `attend`,
  // post-attention and output per chunk, each chunk's set to the policy.
  at::Tensor forward_chunk_loop(int64_t index, const model::LayerWeights& w, const TokenPositions& pos,
                                const at::Tensor& x, runtime::ActivationPolicy* policy, const ChunkAttention& attend);

  LayerProgramParts parts_;
};

}  // namespace memo::train
