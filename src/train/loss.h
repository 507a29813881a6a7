// Cross-entropy over token chunks, forward and backward fused in one pass, so
// the full [tokens, vocab] logit tensor never exists (1M tokens x 128K vocab
// in bf16 would be 256 GB). Only one chunk's logits live at a time.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace memo::train {

// Targets equal to this are ignored (no loss, no gradient).
constexpr int64_t kIgnoreTarget = -1;

struct CrossEntropyResult {
  double loss_sum = 0.0;   // sum of per-token losses over counted tokens
  int64_t count = 0;       // tokens with a target
  at::Tensor dh;           // [T, h] gradient w.r.t. h (undefined without grad)
};

// A chunk size that keeps one chunk's float32 logits and probabilities near
// `budget_bytes`.
int64_t default_loss_chunk(int64_t vocab, int64_t budget_bytes = 256ll << 20);

// h [T, h] and head [V, h] in the compute dtype; targets [T] int64.
// With grad_scale != 0, also returns dh = grad_scale * d(loss_sum)/dh and adds
// grad_scale * d(loss_sum)/d(head) into *head_grad (any float dtype).
// chunk_tokens <= 0 picks default_loss_chunk.
CrossEntropyResult chunked_cross_entropy(const at::Tensor& h, const at::Tensor& head,
                                         const at::Tensor& targets, int64_t chunk_tokens,
                                         double grad_scale, at::Tensor* head_grad);

}  // namespace memo::train
