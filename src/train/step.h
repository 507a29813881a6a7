// One micro-batch through the model: embedding, the layer stack under an
// activation policy, final norm, chunked loss, and the backward back down.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "model/llama.h"
#include "runtime/policy.h"
#include "runtime/trace.h"

namespace memo::train {

struct MicroBatch {
  at::Tensor tokens;   // [B, S] int64
  at::Tensor targets;  // [B, S] int64, kIgnoreTarget where there is no target
};

struct LossSum {
  double sum = 0.0;   // summed per-token loss
  int64_t count = 0;  // tokens that had a target
  double mean() const { return count ? sum / static_cast<double>(count) : 0.0; }
};

// Forward and backward; gradients (scaled by grad_weight / count) are added
// into model.grads(). Returns the loss of this micro-batch.
// With `trace`, each layer's forward and backward becomes a compute span.
LossSum forward_backward(model::LlamaModel& model, runtime::ActivationPolicy& policy,
                         const MicroBatch& batch, double grad_weight, int64_t loss_chunk = 0,
                         runtime::TraceRecorder* trace = nullptr);

// Forward only (evaluation): the loss, nothing saved.
LossSum forward_loss(model::LlamaModel& model, const MicroBatch& batch, int64_t loss_chunk = 0);

}  // namespace memo::train
