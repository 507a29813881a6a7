// One micro-batch through the model: embedding, the layer stack (the
// per-layer program of train/layer_program.h) under an activation policy,
// final norm, chunked loss, and the backward back down.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "model/llama.h"
#include "runtime/policy.h"
#include "runtime/trace.h"
#include "runtime/stage_exchange.h"
#include "runtime/weight_source.h"
#include "train/data.h"
#include "train/layer_program.h"

namespace memo::train {

// A loss summed on the device: reading it (total, mean) waits for the device,
// so a step reads it once, after the backward.
struct LossSum {
  at::Tensor sum;     // [] float64 on the device; undefined: nothing summed yet
  int64_t count = 0;  // tokens that had a target
  void add(const LossSum& other);  // on the device, no wait
  double total() const;            // host synchronisation
  double mean() const { return count ? total() / static_cast<double>(count) : 0.0; }
};

// This rank's part of a micro-batch on many ranks (Ulysses sequence
// parallelism and data parallelism): its tokens start at global position
// `first` of their sequences, attention reaches the other tokens through
// `exchange`, and the gradient is of the mean over `count` tokens (the whole
// micro-batch's, over every rank). The default: the whole sequence here.
struct SequenceShard {
  runtime::StageExchange* exchange = nullptr;  // null: nothing moves
  int64_t first = 0;
  int64_t count = -1;                          // < 0: this batch's supervised tokens
  LayerGradientsHook on_layer_gradients;       // may be empty
  runtime::WeightSource* weights = nullptr;    // the layers' weights (ZeRO 3); null: the model's compute copies
  MeasuredParts* measured = nullptr;           // the chunked program's measured parts; may be null
};

// Forward and backward; gradients (scaled by grad_weight / count) are added
// into model.grads(). Returns the loss of this micro-batch, on the device.
// Nothing here waits for the device when batch.supervised is set (or the
// targets are on the CPU).
// With `trace`, each layer's forward and backward becomes a compute span.
// chunk_tokens: each layer runs over token chunks of this size when it is
// below the sequence (docs/chunks.md; the policy must have been made with the
// same PolicyOptions::chunk_tokens); 0: whole layers.
LossSum forward_backward(model::LlamaModel& model, runtime::ActivationPolicy& policy,
                         const MicroBatch& batch, double grad_weight, int64_t loss_chunk = 0,
                         runtime::TraceRecorder* trace = nullptr, int64_t chunk_tokens = 0,
                         const SequenceShard* shard = nullptr);

// Forward only: the final norm's output [B, S, h] (the lm head's input) for
// tokens [B, S] on the model's device; nothing saved. chunk_tokens: each
// layer runs over token chunks of this size when it is below the sequence,
// as training's forward does (docs/chunks.md): a layer's transients span a
// chunk, not the sequence; 0: whole layers.
at::Tensor final_hidden(model::LlamaModel& model, const at::Tensor& tokens, int64_t chunk_tokens = 0);

// Forward only (evaluation): the loss, nothing saved; chunk_tokens as in final_hidden.
LossSum forward_loss(model::LlamaModel& model, const MicroBatch& batch, int64_t loss_chunk = 0,
                     int64_t chunk_tokens = 0);

}  // namespace memo::train
