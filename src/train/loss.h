// Cross-entropy over token chunks, forward and backward fused in one pass, so
// the full [tokens, vocab] logit tensor never exists (1M tokens x 128K vocab
// in bf16 would be 256 GB). Only one chunk's logits live at a time; the chunk
// is chosen from a memory budget (bigger on a GPU, where every chunk re-reads
// the head and its gradient). The loss stays on the device: nothing here
// waits for the device.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace memo::train {

// Targets equal to this are ignored (no loss, no gradient).
constexpr int64_t kIgnoreTarget = -1;

struct CrossEntropyResult {
  at::Tensor loss_sum;  // [] float64 on h's device: sum of per-token losses over counted tokens
  at::Tensor dh;        // [T, h] gradient w.r.t. h (undefined without grad)
};

// Bytes one token of a chunk holds at once in the loss: its float32 logits
// (float64 for float64 compute), reused in place for their gradient, and for
// a 16-bit compute dtype the compute-dtype copy of that gradient plus as much
// again for the transient compute-dtype logits (where the GEMM cannot write
// float32) or the head-gradient blocks.
int64_t loss_bytes_per_token(int64_t vocab, at::ScalarType compute);

// The default budget of one loss chunk: 4 GiB on CUDA (5.5K tokens per chunk
// at Llama 3's 128K vocabulary in bf16; 3% of an H200), 256 MiB elsewhere.
int64_t default_loss_budget(const at::Device& device);

// The largest chunk whose loss_bytes_per_token fit budget_bytes (at least 1).
int64_t default_loss_chunk(int64_t vocab, at::ScalarType compute, int64_t budget_bytes);

// h [T, h] and head [V, h] in the compute dtype; targets [T] int64 on h's device.
// With grad_scale != 0, also returns dh = grad_scale * d(loss_sum)/dh and adds
// grad_scale * d(loss_sum)/d(head) into *head_grad (the compute dtype or
// float32), without a [V, h]-sized temporary.
// chunk_tokens <= 0 picks default_loss_chunk from default_loss_budget.
// Live memory beyond h, head, *head_grad and dh: at most chunk_tokens *
// loss_bytes_per_token plus a few [chunk_tokens]-sized vectors (a head
// gradient wider than float32 under float32 compute, which training never
// uses, adds as much again for its blocks).
CrossEntropyResult chunked_cross_entropy(const at::Tensor& h, const at::Tensor& head,
                                         const at::Tensor& targets, int64_t chunk_tokens,
                                         double grad_scale, at::Tensor* head_grad);

// True once ATen has refused one of the out_dtype GEMMs (16-bit inputs,
// float32 output; CUDA, PyTorch >= 2.8) the loss uses for float32 logits and
// the in-place head gradient; from then on the portable path runs.
bool mixed_gemm_refused();

}  // namespace memo::train
