// The exchange between a layer's stages (docs/design.md, "The step as a
// per-layer program"): the executor passes q, k, v and o through it on their
// way into and out of attention, in forward and in backward. With the
// sequence on one device it is the identity (NoExchange); Ulysses sequence
// parallelism makes it an all-to-all, from the local tokens and every head to
// the whole sequence and the local heads, and back.
//
// Every tensor is token-major: [B, tokens, heads * d]. "Token layout": the
// local tokens, every head. "Head layout": every token, the local heads (the
// layout attention runs on).
#pragma once

#include <ATen/core/Tensor.h>

namespace memo::runtime {

class StageExchange {
 public:
  virtual ~StageExchange() = default;
  // Before attention (forward, and backward for its inputs): q, k, v packed
  // [B, S_local, (nh + 2 nkv) d] -> head layout.
  virtual at::Tensor qkv_to_heads(const at::Tensor& qkv) = 0;
  // After attention: o [B, S, nh_local d] -> token layout [B, S_local, nh d].
  virtual at::Tensor o_to_tokens(const at::Tensor& o) = 0;
  // Backward, before attention's backward: o or d_o [B, S_local, nh d] ->
  // head layout.
  virtual at::Tensor o_to_heads(const at::Tensor& o) = 0;
  // After attention's backward: dq, dk, dv packed in head layout -> token
  // layout [B, S_local, (nh + 2 nkv) d].
  virtual at::Tensor qkv_to_tokens(const at::Tensor& dqkv) = 0;
};

// One device holds the whole sequence and every head: nothing moves.
class NoExchange final : public StageExchange {
 public:
  at::Tensor qkv_to_heads(const at::Tensor& qkv) override { return qkv; }
  at::Tensor o_to_tokens(const at::Tensor& o) override { return o; }
  at::Tensor o_to_heads(const at::Tensor& o) override { return o; }
  at::Tensor qkv_to_tokens(const at::Tensor& dqkv) override { return dqkv; }
};

}  // namespace memo::runtime
